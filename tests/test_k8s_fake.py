"""The Kubernetes API fake, driven by the official ``kubernetes`` client as a backend would."""

from __future__ import annotations

import base64
import json
import time

import pytest

from mlcontainer_magics.backends.kubernetes.objects import K8sSettings, pod_selector, run_manifests
from mlcontainer_magics.core.spec import EnvSpec, RunSpec

kubernetes = pytest.importorskip("kubernetes")
from kubernetes import client, watch  # noqa: E402
from kubernetes.client.rest import ApiException  # noqa: E402

pytest_plugins = ["k8s_fake"]

NS = "mlc"
FILES = {
    "runner.py": b"print('runner')\n",
    "cell.py": b"print('cell')\n",
    "manifest.json": b"{}",
    "in/x.pkl": b"\x80\x04K\x01.",
}


@pytest.fixture
def api(k8s_fake):
    api_client = k8s_fake.api_client()
    yield client.CoreV1Api(api_client), client.BatchV1Api(api_client)
    api_client.close()


def make_run(snapshot_id="snap-1", settings=None, files=FILES, **spec_kw):
    spec_kw.setdefault("code", "print('cell')\n")
    spec = RunSpec(env_spec=EnvSpec("python:3.11-slim"), **spec_kw)
    secret, job = run_manifests(
        spec,
        image="127.0.0.1:5000/mlc/env:1",
        snapshot_id=snapshot_id,
        namespace=NS,
        settings=settings or K8sSettings(namespace=NS),
        files=files,
    )[:2]
    return secret, job


def submit(api, snapshot_id="snap-1", **kw):
    core, batch = api
    secret, job = make_run(snapshot_id, **kw)
    core.create_namespaced_secret(NS, secret)
    batch.create_namespaced_job(NS, job)
    return job["metadata"]["name"]


def the_pod(api, snapshot_id="snap-1", timeout=5.0):
    core, _ = api
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pods = core.list_namespaced_pod(NS, label_selector=pod_selector(snapshot_id)).items
        if pods:
            return pods[0]
        time.sleep(0.01)
    raise AssertionError("no pod appeared")


def wait_pod(api, name, predicate, timeout=5.0):
    core, _ = api
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pod = core.read_namespaced_pod(name, NS)
        if predicate(pod):
            return pod
        time.sleep(0.01)
    raise AssertionError(f"pod {name} never got there; last status: {pod.status}")


def wait_job_condition(api, name, timeout=5):
    """Watch the Job (by field selector) until it has a Complete or Failed condition."""
    _, batch = api
    w = watch.Watch()
    for event in w.stream(
        batch.list_namespaced_job,
        NS,
        field_selector=f"metadata.name={name}",
        timeout_seconds=timeout,
    ):
        conditions = {c.type: c for c in event["object"].status.conditions or []}
        for final in ("Complete", "Failed"):
            if final in conditions and conditions[final].status == "True":
                w.stop()
                return event["object"], conditions[final]
    raise AssertionError(f"job {name} did not finish within {timeout}s")


def terminated(pod):
    statuses = pod.status.container_statuses or []
    return statuses and statuses[0].state.terminated is not None


# -- access -----------------------------------------------------------------------------------


def test_kubeconfig_points_at_the_fake_and_the_token_is_checked(k8s_fake, tmp_path):
    api_client = k8s_fake.api_client()
    assert client.VersionApi(api_client).get_code().git_version.endswith("-fake")
    assert api_client.configuration.host == k8s_fake.url

    config = json.loads(k8s_fake.kubeconfig.read_text())
    config["users"][0]["user"]["token"] = "wrong"
    (tmp_path / "wrong").write_text(json.dumps(config))
    intruder = kubernetes.config.new_client_from_config(config_file=str(tmp_path / "wrong"))
    with pytest.raises(ApiException) as info:
        client.CoreV1Api(intruder).list_namespaced_pod(NS)
    assert info.value.status == 401


def test_unknown_namespace_lists_as_empty_but_refuses_a_create(api):
    """As a real API server: a list in a namespace that does not exist is empty, not 404."""
    core, _ = api
    assert core.list_namespaced_pod("nope").items == []
    with pytest.raises(ApiException) as info:
        core.create_namespaced_secret(
            "nope", {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}}
        )
    assert info.value.status == 404 and 'namespaces \\"nope\\" not found' in info.value.body


# -- a run, start to finish -------------------------------------------------------------------


def test_job_pod_progresses_and_its_log_streams(api, k8s_fake):
    core, batch = api

    def container(pod):  # writes a line, and the next ones only once someone follows
        pod.log("one")
        k8s_fake.wait_for(lambda: any(r["path"].endswith("/log") for r in k8s_fake.requests))
        for line in ("two", "three"):
            time.sleep(0.1)
            pod.log(line)
        return 0

    k8s_fake.script("mlc-", run=container)
    w = watch.Watch()
    phases = []
    since = core.list_namespaced_pod(NS).metadata.resource_version
    name = submit(api)
    for event in w.stream(
        core.list_namespaced_pod,
        NS,
        label_selector=pod_selector("snap-1"),
        resource_version=since,
        timeout_seconds=5,
    ):
        pod = event["object"]
        if not phases or phases[-1] != pod.status.phase:
            phases.append(pod.status.phase)
        if pod.status.phase == "Running":
            break
    w.stop()
    assert phases[0] == "Pending" and phases[-1] == "Running"
    assert pod.metadata.labels["job-name"] == name
    assert pod.metadata.owner_references[0].kind == "Job"

    # Follow the log: the first line arrives while the container is still writing.
    response = core.read_namespaced_pod_log(
        pod.metadata.name, NS, container="cell", follow=True, _preload_content=False
    )
    arrivals = []
    for chunk in response.stream(amt=None, decode_content=False):
        arrivals.append((time.monotonic(), chunk))
    text = b"".join(c for _, c in arrivals).decode()
    assert text == "one\ntwo\nthree\n"
    assert len(arrivals) >= 2 and arrivals[-1][0] - arrivals[0][0] >= 0.1

    pod = wait_pod(api, pod.metadata.name, terminated)
    assert pod.status.phase == "Succeeded"
    state = pod.status.container_statuses[0].state.terminated
    assert (state.exit_code, state.reason) == (0, "Completed")
    job, condition = wait_job_condition(api, name)
    assert condition.type == "Complete" and job.status.succeeded == 1
    assert job.status.completion_time is not None

    # After the end, the whole log, and a tail with timestamps.
    assert core.read_namespaced_pod_log(pod.metadata.name, NS) == "one\ntwo\nthree\n"
    tail = core.read_namespaced_pod_log(pod.metadata.name, NS, tail_lines=1, timestamps=True)
    assert tail.endswith("Z three\n") and tail.count("\n") == 1


def test_log_lines_through_watch(api, k8s_fake):
    core, _ = api
    k8s_fake.script("mlc-", logs=["a", "b"])
    submit(api)
    pod = wait_pod(api, the_pod(api).metadata.name, lambda p: p.status.phase != "Pending")
    lines = list(watch.Watch().stream(core.read_namespaced_pod_log, pod.metadata.name, NS))
    assert lines == ["a", "b"]


def test_created_job_gets_server_defaults(api):
    _, batch = api
    name = submit(api)
    job = batch.read_namespaced_job(name, NS)
    assert job.spec.backoff_limit == 0  # ours, not the default 6
    assert job.spec.completions == 1 and job.spec.parallelism == 1
    uid = job.metadata.uid
    assert job.spec.selector.match_labels == {"batch.kubernetes.io/controller-uid": uid}
    assert job.spec.template.metadata.labels["job-name"] == name
    assert job.metadata.labels["mlcontainer.org/snapshot"] == "snap-1"


def test_the_container_sees_the_payload_and_secret_env(api, k8s_fake):
    seen = {}

    def container(pod):
        seen.update(files=dict(pod.files), env=dict(pod.env))
        pod.log("out")
        return 3

    k8s_fake.script("mlc-", run=container)
    name = submit(api, env=(("API_TOKEN", "tok-123"), ("MODE", "x")))
    job, condition = wait_job_condition(api, name)
    assert condition.type == "Failed" and condition.reason == "BackoffLimitExceeded"
    assert seen["files"] == {f"/mlc/{path}": data for path, data in FILES.items()}
    assert seen["env"]["API_TOKEN"] == "tok-123" and seen["env"]["MODE"] == "x"
    pod = api[0].list_namespaced_pod(NS, label_selector=f"job-name={name}").items[0]
    assert pod.status.container_statuses[0].state.terminated.exit_code == 3
    assert api[0].read_namespaced_pod_log(pod.metadata.name, NS) == "out\n"


# -- scenarios --------------------------------------------------------------------------------


def test_oom(api, k8s_fake):
    k8s_fake.script("mlc-", scenario="oom")
    name = submit(api)
    pod = wait_pod(api, the_pod(api).metadata.name, terminated)
    state = pod.status.container_statuses[0].state.terminated
    assert (pod.status.phase, state.reason, state.exit_code) == ("Failed", "OOMKilled", 137)
    job, condition = wait_job_condition(api, name)
    assert condition.type == "Failed" and job.status.failed == 1


def test_failure_is_not_retried_with_backoff_limit_zero_but_is_with_more(api, k8s_fake):
    k8s_fake.script("mlc-", scenario="fail")
    name = submit(api, "once")
    wait_job_condition(api, name)
    assert len(k8s_fake.pods_of(name, NS)) == 1

    name = submit(api, "thrice", settings=K8sSettings(namespace=NS, backoff_limit=2))
    job, condition = wait_job_condition(api, name)
    assert condition.reason == "BackoffLimitExceeded" and job.status.failed == 3
    assert len(k8s_fake.pods_of(name, NS)) == 3


def test_image_pull_failure(api, k8s_fake):
    core, _ = api
    k8s_fake.script("mlc-", scenario="image_pull")
    submit(api)
    name = the_pod(api).metadata.name
    reasons = set()
    deadline = time.monotonic() + 5
    while reasons != {"ErrImagePull", "ImagePullBackOff"} and time.monotonic() < deadline:
        pod = core.read_namespaced_pod(name, NS)
        waiting = (pod.status.container_statuses or [None])[0]
        if waiting and waiting.state.waiting:
            reasons.add(waiting.state.waiting.reason)
            if waiting.state.waiting.reason == "ErrImagePull":
                assert "127.0.0.1:5000/mlc/env:1" in waiting.state.waiting.message
    assert reasons == {"ErrImagePull", "ImagePullBackOff"}
    assert pod.status.phase == "Pending"
    with pytest.raises(ApiException) as info:
        core.read_namespaced_pod_log(name, NS)
    assert info.value.status == 400 and "is waiting to start" in info.value.body


def test_unschedulable(api, k8s_fake):
    k8s_fake.script(
        "mlc-",
        scenario="unschedulable",
        message="0/2 nodes are available: 2 Insufficient nvidia.com/gpu.",
    )
    submit(api, gpus="1")
    pod = wait_pod(api, the_pod(api).metadata.name, lambda p: p.status.conditions)
    (condition,) = pod.status.conditions
    assert (condition.type, condition.status, condition.reason) == (
        "PodScheduled",
        "False",
        "Unschedulable",
    )
    assert "Insufficient nvidia.com/gpu" in condition.message
    assert pod.status.phase == "Pending" and pod.spec.node_name is None


def test_deadline_exceeded(api, k8s_fake):
    core, _ = api
    k8s_fake.time_scale = 0.1  # the Job's 10 s deadline passes in 1 s
    k8s_fake.script("mlc-", scenario="hang", logs=["working"])
    name = submit(api, timeout=10)
    pod_name = the_pod(api).metadata.name
    job, condition = wait_job_condition(api, name)
    assert (condition.type, condition.reason) == ("Failed", "DeadlineExceeded")
    assert "deadline" in condition.message
    # The controller deletes the pod that ran over.
    k8s_fake.wait_for(lambda: not k8s_fake.pods_of(name, NS))
    with pytest.raises(ApiException) as info:
        core.read_namespaced_pod(pod_name, NS)
    assert info.value.status == 404


def test_deadline_scenario_without_a_deadline_on_the_job(api, k8s_fake):
    k8s_fake.script("mlc-", scenario="deadline", deadline_after=0.1)
    name = submit(api)
    assert wait_job_condition(api, name)[1].reason == "DeadlineExceeded"


def test_pod_waits_for_its_secret(api, k8s_fake):
    core, batch = api
    secret, job = make_run()
    batch.create_namespaced_job(NS, job)  # the Secret comes late
    pod = the_pod(api)
    time.sleep(0.2)
    pod = core.read_namespaced_pod(pod.metadata.name, NS)
    assert pod.status.phase == "Pending"
    assert pod.status.container_statuses[0].state.waiting.reason == "ContainerCreating"
    core.create_namespaced_secret(NS, secret)
    wait_pod(api, pod.metadata.name, terminated)
    assert wait_job_condition(api, job["metadata"]["name"])[1].type == "Complete"


def test_missing_secret_key_is_a_config_error(api, k8s_fake):
    core, batch = api
    secret, job = make_run(env=(("API_TOKEN", "t"),))
    del secret["data"]["env.API_TOKEN"]
    core.create_namespaced_secret(NS, secret)
    batch.create_namespaced_job(NS, job)
    pod = wait_pod(
        api,
        the_pod(api).metadata.name,
        lambda p: (
            p.status.container_statuses
            and p.status.container_statuses[0].state.waiting.reason != "ContainerCreating"
        ),
    )
    waiting = pod.status.container_statuses[0].state.waiting
    assert waiting.reason == "CreateContainerConfigError"
    assert "couldn't find key env.API_TOKEN" in waiting.message


def test_finished_jobs_expire_after_their_ttl(api, k8s_fake):
    k8s_fake.time_scale = 0.01
    name = submit(api, settings=K8sSettings(namespace=NS, ttl_seconds=20))
    k8s_fake.wait_for(lambda: k8s_fake.get("jobs", name, NS) is None, timeout=5)
    assert not k8s_fake.pods_of(name, NS)


# -- deletion ---------------------------------------------------------------------------------


def test_delete_with_background_propagation_takes_pods_and_owned_secret(api, k8s_fake):
    core, batch = api
    k8s_fake.script("mlc-", scenario="hang")
    name = submit(api)
    job = batch.read_namespaced_job(name, NS)
    # Hand the Secret to the Job so the garbage collector takes it along.
    core.patch_namespaced_secret(
        name,
        NS,
        {
            "metadata": {
                "ownerReferences": [
                    {"apiVersion": "batch/v1", "kind": "Job", "name": name, "uid": job.metadata.uid}
                ]
            }
        },
    )
    pod = wait_pod(api, the_pod(api).metadata.name, lambda p: p.status.phase == "Running")

    batch.delete_namespaced_job(name, NS, propagation_policy="Background")
    for read in (
        lambda: batch.read_namespaced_job(name, NS),
        lambda: core.read_namespaced_pod(pod.metadata.name, NS),
        lambda: core.read_namespaced_secret(name, NS),
    ):
        with pytest.raises(ApiException) as info:
            read()
        assert info.value.status == 404
    delete = [r for r in k8s_fake.requests if r["method"] == "DELETE"][-1]
    assert delete["path"] == f"/apis/batch/v1/namespaces/{NS}/jobs/{name}"
    # The client sends it as a query parameter; V1DeleteOptions would put it in the body.
    assert (
        delete["query"].get("propagationPolicy") or (delete["body"] or {}).get("propagationPolicy")
    ) == "Background"


def test_delete_options_in_the_body(api, k8s_fake):
    core, batch = api
    k8s_fake.script("mlc-", scenario="hang")
    name = submit(api)
    the_pod(api)
    batch.delete_namespaced_job(
        name, NS, body=client.V1DeleteOptions(propagation_policy="Foreground")
    )
    assert not k8s_fake.pods_of(name, NS)


def test_delete_without_a_policy_orphans_the_pods(api, k8s_fake):
    core, batch = api
    k8s_fake.script("mlc-", scenario="hang")
    name = submit(api)
    pod = the_pod(api)
    batch.delete_namespaced_job(name, NS)
    orphan = core.read_namespaced_pod(pod.metadata.name, NS)
    assert not orphan.metadata.owner_references
    core.delete_namespaced_pod(pod.metadata.name, NS)
    core.delete_namespaced_secret(name, NS)
    assert core.list_namespaced_pod(NS).items == []


def test_following_a_log_ends_when_the_pod_is_deleted(api, k8s_fake):
    core, batch = api
    k8s_fake.script("mlc-", scenario="hang", logs=["started"])
    name = submit(api)
    pod = wait_pod(api, the_pod(api).metadata.name, lambda p: p.status.phase == "Running")
    response = core.read_namespaced_pod_log(
        pod.metadata.name, NS, follow=True, _preload_content=False
    )
    chunks = response.stream(amt=None, decode_content=False)
    assert next(chunks) == b"started\n"
    batch.delete_namespaced_job(name, NS, propagation_policy="Foreground")
    assert list(chunks) == []


# -- the API server's checks ------------------------------------------------------------------


def test_create_twice_is_a_conflict(api):
    core, _ = api
    secret, _ = make_run()
    core.create_namespaced_secret(NS, secret)
    with pytest.raises(ApiException) as info:
        core.create_namespaced_secret(NS, secret)
    assert info.value.status == 409 and "AlreadyExists" in info.value.body


def raw_post(fake, path, body):
    """POST without the client, whose own models would refuse an unknown field first."""
    import urllib.error
    import urllib.request

    request = urllib.request.Request(
        fake.url + path,
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Authorization": f"Bearer {fake.token}", "Content-Type": "application/json"},
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_objects_are_validated_against_the_schema(api, k8s_fake):
    _, batch = api
    _, job = make_run()
    job["spec"]["template"]["spec"]["containers"][0]["imagePullPolcy"] = "Always"
    code, status = raw_post(k8s_fake, f"/apis/batch/v1/namespaces/{NS}/jobs", job)
    assert (code, status["reason"]) == (422, "Invalid")
    assert "imagePullPolcy" in status["message"]
    assert k8s_fake.get("jobs", job["metadata"]["name"], NS) is None

    _, job = make_run()
    job["metadata"]["name"] = "x" * 64
    with pytest.raises(ApiException) as info:
        batch.create_namespaced_job(NS, job)
    assert info.value.status == 422 and "63 characters" in info.value.body


def test_secret_size_limit(api):
    core, _ = api
    secret, _ = make_run()
    secret["data"]["big"] = base64.b64encode(b"\0" * (1024**2)).decode()
    with pytest.raises(ApiException) as info:
        core.create_namespaced_secret(NS, secret)
    assert info.value.status == 422 and "at most 1048576 bytes" in info.value.body


def test_immutable_secret_data_cannot_change(api):
    core, _ = api
    secret, _ = make_run()
    name = secret["metadata"]["name"]
    core.create_namespaced_secret(NS, secret)
    with pytest.raises(ApiException) as info:
        core.patch_namespaced_secret(name, NS, {"data": {"cell.py": "eA=="}})
    assert info.value.status == 422 and "immutable" in info.value.body
    # Metadata may change; a JSON patch works too.
    core.patch_namespaced_secret(
        name, NS, [{"op": "add", "path": "/metadata/labels/extra", "value": "1"}]
    )
    assert core.read_namespaced_secret(name, NS).metadata.labels["extra"] == "1"


def test_selectors(api, k8s_fake):
    core, _ = api
    k8s_fake.script("mlc-", scenario="hang")
    submit(api, "s1")
    submit(api, "s2")
    k8s_fake.wait_for(lambda: len(k8s_fake.list("pods", NS)) == 2)

    def names(**kw):
        return sorted(
            p.metadata.labels["mlcontainer.org/snapshot"]
            for p in core.list_namespaced_pod(NS, **kw).items
        )

    assert names(label_selector="mlcontainer.org/snapshot in (s1, s3)") == ["s1"]
    assert names(label_selector="mlcontainer.org/snapshot notin (s1)") == ["s2"]
    assert names(label_selector="mlcontainer.org/snapshot!=s2,job-name") == ["s1"]
    assert names(label_selector="!job-name") == []
    pod = core.list_namespaced_pod(NS, label_selector=pod_selector("s2")).items[0]
    assert names(field_selector=f"metadata.name={pod.metadata.name}") == ["s2"]
    with pytest.raises(ApiException) as info:
        core.list_namespaced_pod(NS, field_selector="spec.bogus=1")
    assert info.value.status == 400


def test_watch_from_a_resource_version_sees_only_later_events(api, k8s_fake):
    core, _ = api
    listed = core.list_namespaced_secret(NS)
    secret, _ = make_run("later")
    core.create_namespaced_secret(NS, secret)
    events = list(
        watch.Watch().stream(
            core.list_namespaced_secret,
            NS,
            resource_version=listed.metadata.resource_version,
            timeout_seconds=1,
        )
    )
    assert [(e["type"], e["object"].metadata.name) for e in events] == [
        ("ADDED", secret["metadata"]["name"])
    ]
