"""A map (``--map``) on Kubernetes: one Indexed Job, its objects validated strictly, the fake
API server playing the Job controller for it, and the backend's run_map against the fake."""

from __future__ import annotations

import base64
import json
import pickle
import re
import threading
import time

import pytest

from mlcontainer_magics.backends.kubernetes import indexed
from mlcontainer_magics.backends.kubernetes.objects import (
    OLDEST_KUBERNETES,
    K8sSettings,
    pod_selector,
)
from mlcontainer_magics.core.spec import EnvSpec, RunSpec
from mlcontainer_magics.errors import SpecError

kubernetes_validate = pytest.importorskip("kubernetes_validate")
kubernetes = pytest.importorskip("kubernetes")
from kubernetes import client  # noqa: E402

pytest_plugins = ["k8s_fake"]

NS = "mlc"
IMAGE = "127.0.0.1:5000/mlc/env@sha256:" + "a" * 64
NEWEST_KUBERNETES = kubernetes_validate.utils.major_minor(kubernetes_validate.latest_version())
K8S_VERSIONS = [OLDEST_KUBERNETES, NEWEST_KUBERNETES]
FILES = {
    "runner.py": b"print('runner')\n",
    "cell.py": b"y = x * 2\n",
    "manifest.json": b'{"map": {"name": "x", "count": 3}}',
    "in/x/00000.json": b"1",
    "in/x/00001.json": b"2",
    "in/x/00002.json": b"3",
}
INDEX_REF = {
    "fieldRef": {"fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"}
}


def make_spec(**kw) -> RunSpec:
    kw.setdefault("code", "y = x * 2\n")
    kw.setdefault("env_spec", EnvSpec("python:3.11-slim"))
    return RunSpec(**kw)


def manifests(spec=None, *, count=3, parallel=2, retries=1, per_index=True, files=FILES, **kw):
    return indexed.map_manifests(
        spec or make_spec(),
        image=IMAGE,
        snapshot_id=kw.pop("snapshot_id", "map-1"),
        namespace=NS,
        settings=kw.pop("settings", K8sSettings(namespace=NS)),
        files=files,
        count=count,
        parallel=parallel,
        retries=retries,
        per_index=per_index,
    )


def validate(obj):
    for version in K8S_VERSIONS:
        kubernetes_validate.validate(obj, version, strict=True)


# -- the objects ------------------------------------------------------------------------------


def test_the_indexed_job_validates_strictly_and_says_completions_parallelism_and_retries():
    spec = make_spec(timeout=30, network="none", env=(("API_TOKEN", "s3"),))
    objs = manifests(spec, count=5, parallel=2, retries=1)
    assert [o["kind"] for o in objs] == ["Secret", "Job", "NetworkPolicy"]
    for obj in objs:
        validate(obj)
    job = objs[1]["spec"]
    assert job["completionMode"] == "Indexed"
    assert (job["completions"], job["parallelism"], job["backoffLimitPerIndex"]) == (5, 2, 1)
    # A failing item must never end the others: no Job-wide limit, no maxFailedIndexes.
    assert "backoffLimit" not in job and "maxFailedIndexes" not in job
    # --timeout bounds each item (its pod), not the whole map.
    assert "activeDeadlineSeconds" not in job
    assert job["template"]["spec"]["activeDeadlineSeconds"] == 30
    (container,) = job["template"]["spec"]["containers"]
    assert {"name": "MLC_INDEX", "valueFrom": INDEX_REF} in container["env"]
    assert "s3" not in json.dumps(objs[1])  # secret values stay in the Secret
    # Every item's file travels in the one Secret, mounted into /mlc like a run's inputs.
    data = objs[0]["data"]
    assert base64.b64decode(data["in__x__00002.json"]) == b"3"
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert {"/mlc/in/x/00000.json", "/mlc/in/x/00002.json", "/mlc/manifest.json"} <= mounts


def test_parallelism_is_at_most_one_pod_per_item_and_all_at_once_by_default():
    assert manifests(count=3, parallel=8)[1]["spec"]["parallelism"] == 3
    assert manifests(count=7, parallel=None)[1]["spec"]["parallelism"] == 7
    assert manifests(count=7, parallel=1)[1]["spec"]["parallelism"] == 1


def test_an_old_cluster_gets_a_backoff_limit_shared_by_all_items():
    job = manifests(count=4, retries=2, per_index=False)[1]
    validate(job)
    assert job["spec"]["backoffLimit"] == 8 and "backoffLimitPerIndex" not in job["spec"]
    note = indexed.shared_backoff_note((1, 28), 4, 2)
    assert "Kubernetes 1.28" in note and "8 retries" in note and "1.29" in note


@pytest.mark.parametrize(
    "info, version, per_index",
    [
        ({"major": "1", "minor": "29"}, (1, 29), True),
        ({"major": "1", "minor": "33+", "gitVersion": "v1.33.1-gke.100"}, (1, 33), True),
        ({"major": "1", "minor": "28"}, (1, 28), False),
        ({"major": "", "minor": "", "gitVersion": "v1.30.2"}, (1, 30), True),
        ({}, None, False),
        (None, None, False),
    ],
)
def test_per_index_backoff_only_where_the_server_is_new_enough(info, version, per_index):
    assert indexed.server_version(info) == version
    assert indexed.per_index_backoff(version) is per_index


def test_items_too_large_for_a_secret_are_a_clear_error_about_the_map():
    files = {**FILES, **{f"in/x/{i:05d}.npy": b"\0" * (300 * 1024) for i in range(4)}}
    with pytest.raises(SpecError) as info:
        manifests(files=files, count=4)
    message = str(info.value)
    assert "1 MiB" in message and "items" in message and "Docker backend" in message


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"count": 0}, "items of 1 or more"),
        ({"parallel": 0}, "--parallel of 1 or more"),
        ({"retries": -1}, "--retries"),
        ({"count": 100_001}, "at most 100000 items"),
    ],
)
def test_bad_counts_are_spec_errors(kw, match):
    with pytest.raises(SpecError, match=match):
        manifests(**kw)


def test_indexes_of_the_status():
    assert indexed.parse_indexes("1,3-5,7") == {1, 3, 4, 5, 7}
    assert indexed.parse_indexes("") == set() and indexed.parse_indexes(None) == set()
    pod = {"metadata": {"annotations": {indexed.COMPLETION_INDEX: "4"}}}
    assert indexed.pod_index(pod) == 4 and indexed.pod_index({"metadata": {}}) is None


# -- the fake's Job controller for Indexed Jobs ------------------------------------------------


@pytest.fixture
def api(k8s_fake):
    api_client = k8s_fake.api_client()
    yield client.CoreV1Api(api_client), client.BatchV1Api(api_client)
    api_client.close()


def submit(api, objs):
    core, batch = api
    core.create_namespaced_secret(NS, objs[0])
    batch.create_namespaced_job(NS, objs[1])
    return objs[1]["metadata"]["name"]


def final_job(k8s_fake, name, timeout=10.0):
    def final():
        job = k8s_fake.get("jobs", name, NS)
        conditions = (job or {}).get("status", {}).get("conditions") or []
        done = [c for c in conditions if c["type"] in ("Complete", "Failed")]
        return job if done else None

    return k8s_fake.wait_for(final, timeout)


def conditions(job):
    return {c["type"]: c.get("reason") for c in job["status"].get("conditions") or []}


def test_the_fake_runs_a_pod_per_index_at_most_parallelism_at_once(api, k8s_fake):
    seen, lock = [], threading.Lock()

    def container(pod):
        with lock:
            seen.append((pod.env["MLC_INDEX"], pod.env["JOB_COMPLETION_INDEX"]))
        pod.log(f"item {pod.env['MLC_INDEX']}")
        time.sleep(0.05)
        return 0

    k8s_fake.script("mlc-", run=container)
    name = submit(api, manifests(count=5, parallel=2))
    job = final_job(k8s_fake, name)
    assert conditions(job)["Complete"] == "CompletionsReached"
    status = job["status"]
    assert status["completedIndexes"] == "0-4" and status["succeeded"] == 5
    assert status["failedIndexes"] == "" and status["failed"] == 0
    assert sorted(seen) == [(str(i), str(i)) for i in range(5)]
    assert k8s_fake.peak_running[(NS, name)] == 2
    pods = k8s_fake.pods_of(name, NS)
    assert sorted(p["metadata"]["annotations"][indexed.COMPLETION_INDEX] for p in pods) == [
        str(i) for i in range(5)
    ]
    assert all(p["metadata"]["name"].startswith(f"{name}-") for p in pods)
    assert {p["spec"]["hostname"] for p in pods} == {f"{name}-{i}" for i in range(5)}


def test_the_fake_retries_a_failed_index_on_its_own_then_marks_it_failed(api, k8s_fake):
    attempts: dict[str, int] = {}
    lock = threading.Lock()

    def container(pod):
        index = pod.env["MLC_INDEX"]
        with lock:
            attempts[index] = attempts.get(index, 0) + 1
        if index == "1":
            return 1  # always
        if index == "3" and attempts[index] == 1:
            return 1  # once
        return 0

    k8s_fake.script("mlc-", run=container)
    name = submit(api, manifests(count=5, parallel=3, retries=1))
    job = final_job(k8s_fake, name)
    assert conditions(job)["Failed"] == "FailedIndexes"
    assert conditions(job)["FailureTarget"] == "FailedIndexes"
    status = job["status"]
    assert status["completedIndexes"] == "0,2-4" and status["failedIndexes"] == "1"
    assert status["failed"] == 3 and status["succeeded"] == 4
    assert attempts == {"0": 1, "1": 2, "2": 1, "3": 2, "4": 1}
    failures = sorted(
        p["metadata"]["annotations"][indexed.INDEX_FAILURES]
        for p in k8s_fake.pods_of(name, NS)
        if p["metadata"]["annotations"][indexed.COMPLETION_INDEX] == "1"
    )
    assert failures == ["0", "1"]


def test_on_an_old_fake_the_shared_backoff_limit_ends_every_item(tmp_path):
    from k8s_fake import FakeKubernetes

    with FakeKubernetes(namespaces=(NS,), k8s_version="1.28") as fake:
        fake.restart_scale = 0.001  # six retries of item 0 before the Job fails
        fake.write_kubeconfig(tmp_path / "kubeconfig")
        api_client = fake.api_client()
        try:
            released = threading.Event()

            def container(pod):
                if pod.env["MLC_INDEX"] == "0":
                    return 1
                while not pod.cancelled and not released.is_set():
                    time.sleep(0.01)
                return 0

            fake.script("mlc-", run=container)
            # Per-index retries asked of a 1.28 server: it drops the field.
            objs = manifests(count=3, parallel=3, retries=0, per_index=True)
            name = submit((client.CoreV1Api(api_client), client.BatchV1Api(api_client)), objs)
            job = final_job(fake, name)
            released.set()
            assert "backoffLimitPerIndex" not in job["spec"]
            assert job["spec"]["backoffLimit"] == 6
        finally:
            api_client.close()


def test_the_fake_fails_the_job_past_a_shared_backoff_limit(api, k8s_fake):
    def container(pod):
        if pod.env["MLC_INDEX"] == "0":
            return 1
        while not pod.cancelled:
            time.sleep(0.01)
        return 0

    k8s_fake.script("mlc-", run=container)
    name = submit(api, manifests(count=3, parallel=3, retries=0, per_index=False))
    job = final_job(k8s_fake, name)
    assert conditions(job)["Failed"] == "BackoffLimitExceeded"
    assert "failedIndexes" not in job["status"] and job["status"]["failed"] >= 1
    # The other items were running: the controller deleted their pods.
    k8s_fake.wait_for(lambda: not any(p for p in k8s_fake.pods_of(name, NS) if _live(p)))


def _live(pod):
    return pod["status"].get("phase") not in ("Succeeded", "Failed")


def test_a_pod_past_its_own_deadline_fails_with_deadline_exceeded(api, k8s_fake):
    def container(pod):
        if pod.env["MLC_INDEX"] == "1":
            while True:
                time.sleep(0.01)
        return 0

    k8s_fake.time_scale = 0.01  # 20 s: 0.2 s
    k8s_fake.script("mlc-", run=container)
    name = submit(api, manifests(make_spec(timeout=20), count=2, parallel=2, retries=0))
    job = final_job(k8s_fake, name)
    assert job["status"]["failedIndexes"] == "1" and job["status"]["completedIndexes"] == "0"
    (late,) = [
        p
        for p in k8s_fake.pods_of(name, NS)
        if p["metadata"]["annotations"][indexed.COMPLETION_INDEX] == "1"
    ]
    assert late["status"]["reason"] == "DeadlineExceeded" and late["status"]["phase"] == "Failed"


def test_the_fake_refuses_what_the_api_server_refuses(api):
    _, batch = api
    job = manifests()[1]
    del job["spec"]["completions"]
    with pytest.raises(kubernetes.client.rest.ApiException, match="completions"):
        batch.create_namespaced_job(NS, job)
    job = manifests()[1]
    job["spec"]["completionMode"] = "NonIndexed"
    with pytest.raises(kubernetes.client.rest.ApiException, match="backoffLimitPerIndex"):
        batch.create_namespaced_job(NS, job)


def test_deleting_the_job_takes_every_pod_of_it(api, k8s_fake):
    def container(pod):
        while not pod.cancelled:
            time.sleep(0.01)
        return 143

    k8s_fake.script("mlc-", run=container)
    core, batch = api
    name = submit(api, manifests(count=4, parallel=2))
    k8s_fake.wait_for(lambda: len(k8s_fake.pods_of(name, NS)) == 2)
    batch.delete_namespaced_job(name, NS, propagation_policy="Background")
    k8s_fake.wait_for(lambda: not k8s_fake.pods_of(name, NS))
    assert not core.list_namespaced_pod(NS, label_selector=pod_selector("map-1")).items


# -- run_map: the backend against the fake ------------------------------------------------------


from test_k8s_backend import (  # noqa: E402
    ENV,
    Recorder,
    backend_for,
    interrupt_main_thread_when,
    json_outputs,
    runner_pod,
    stderr_line,
)

from mlcontainer_magics.core import maps, transfer  # noqa: E402
from mlcontainer_magics.core.spec import MapSpec  # noqa: E402
from mlcontainer_magics.core.store import Store  # noqa: E402


@pytest.fixture
def backend(k8s_fake, monkeypatch):
    b = backend_for(k8s_fake)
    monkeypatch.setattr(b, "ensure_environment", lambda *a, **k: ENV)
    return b


def item_pod(
    compute=lambda x: x * 2, fails=lambda index, attempt: False, hold=None, read=json.loads
):
    """A ``run=`` callback that plays the runner for one item of a map, as the real one does in
    an Indexed Job's pod: item ``MLC_INDEX`` of the manifest's map block, read from the
    Secret's files; it prints, then offers ``--out y`` (compute(x)) to be taken over exec.
    ``fails(index, attempt)``: the cell raises instead (a traceback on stderr, exit 1).
    ``read``: how the item's file is read (pickle.loads for items sent as pickle)."""
    attempts: dict[int, int] = {}
    lock = threading.Lock()

    def container(pod):
        manifest = json.loads(pod.files["/mlc/manifest.json"])
        index = int(pod.env["MLC_INDEX"])
        entry = manifest["map"]["items"][index]
        x = read(pod.files[f"/mlc/{entry['file']}"])
        index = entry.get("index", index)  # the item's own, as the runner tells the cell
        with lock:
            attempts[index] = attempt = attempts.get(index, 0) + 1
        pod.log(f"item {index}: x={x}")
        if hold is not None:
            hold(pod)
        if fails(index, attempt):
            pod.log(stderr_line("Traceback (most recent call last):\n"))
            pod.log(stderr_line(f"ValueError: item {index} is bad\n"))
            return 1
        return runner_pod([], **json_outputs(y=compute(x)))(pod)

    container.attempts = attempts
    return container


def map_spec(parallel=None, retries=0, **kw):
    kw.setdefault("code", "y = x * 2\n")
    kw.setdefault("outputs", ("y",))
    return RunSpec(
        env_spec=EnvSpec("python:3.11-slim"),
        map=MapSpec("x", parallel, retries),
        **kw,
    )


def execute(backend, tmp_path, spec, items, rec=None):
    rec = rec or Recorder()
    store = Store(tmp_path / "store")
    outcome = maps.execute_map(
        spec, backend, inputs={"x": items}, events=rec.event, output=rec.out, store=store
    )
    return outcome, rec, store


def the_job(k8s_fake):
    (job,) = [j for j in k8s_fake.list("jobs", NS) if j["spec"].get("completionMode")]
    return job


def test_a_map_is_one_indexed_job_that_runs_every_item_and_gathers_them_in_order(
    backend, k8s_fake, tmp_path
):
    secrets = []

    def hold(pod):  # the Secret as the pods see it
        secrets.append(k8s_fake.get("secrets", the_job(k8s_fake)["metadata"]["name"], NS))

    k8s_fake.script("mlc-", run=item_pod(hold=hold))
    items = [3, 1, 4, 1, 5, 9, 2]
    outcome, rec, store = execute(backend, tmp_path, map_spec(parallel=3), items)

    assert outcome.ok and outcome.values == {"y": [x * 2 for x in items]}
    job = the_job(k8s_fake)
    spec = job["spec"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == ("Indexed", 7, 3)
    assert spec["backoffLimitPerIndex"] == 0
    assert job["status"]["completedIndexes"] == "0-6"
    assert k8s_fake.peak_running[(NS, job["metadata"]["name"])] == 3
    # Each item's output came back, whole lines, as its pod printed them.
    assert sorted(rec.text().splitlines()) == sorted(
        f"item {i}: x={x}" for i, x in enumerate(items)
    )
    # One Secret carried the items (not the whole mapped value too) and went with the map.
    keys = set(secrets[0]["data"])
    assert {f"in__x__{i:05d}.json" for i in range(7)} <= keys
    assert not any(k.startswith("in__x.") for k in keys)
    assert k8s_fake.get("secrets", job["metadata"]["name"], NS) is None
    record = store.get(outcome.run_id)
    assert [i["reason"] for i in record["map"]["items"]] == ["done"] * 7
    assert [i["attempts"] for i in record["map"]["items"]] == [1] * 7
    mapped = [info for phase, info in rec.events if phase == "mapped"]
    assert mapped[-1]["done"] == 7 and mapped[-1]["failed"] == 0 and mapped[-1]["count"] == 7
    assert all(m["running"] <= 3 for m in mapped)


def test_a_failing_item_is_reported_by_index_and_the_others_are_kept(backend, k8s_fake, tmp_path):
    pod = item_pod(fails=lambda index, attempt: index == 2)
    k8s_fake.script("mlc-", run=pod)
    outcome, rec, store = execute(backend, tmp_path, map_spec(parallel=2, retries=1), [0, 1, 2, 3])

    assert outcome.values == {"y": [0, 2, None, 6]}
    assert pod.attempts == {0: 1, 1: 1, 2: 2, 3: 1}  # retried on its own, once
    job = the_job(k8s_fake)
    assert job["status"]["failedIndexes"] == "2"
    assert {c["type"]: c["reason"] for c in job["status"]["conditions"]}["Failed"] == (
        "FailedIndexes"
    )
    error = maps.map_error(outcome)
    assert error is not None and "item 2" in str(error) and "1 of 4 items" in str(error)
    (failed,) = [i for i in store.get(outcome.run_id)["map"]["items"] if i["reason"] != "done"]
    assert failed["index"] == 2 and failed["attempts"] == 2 and failed["exit_code"] == 1
    assert "ValueError: item 2 is bad" in failed["error"]
    mapped = [info for phase, info in rec.events if phase == "mapped"][-1]
    assert mapped["failed"] == 1 and mapped["failures"][0]["index"] == 2
    assert "ValueError: item 2 is bad" in mapped["failures"][0]["why"]


def test_retries_recover_an_item_that_fails_once(backend, k8s_fake, tmp_path):
    pod = item_pod(fails=lambda index, attempt: index == 1 and attempt == 1)
    k8s_fake.script("mlc-", run=pod)
    outcome, _, store = execute(backend, tmp_path, map_spec(retries=2), [5, 6, 7])
    assert outcome.ok and outcome.values == {"y": [10, 12, 14]}
    assert [i["attempts"] for i in store.get(outcome.run_id)["map"]["items"]] == [1, 2, 1]


def test_an_item_past_its_timeout_is_a_timeout(backend, k8s_fake, tmp_path):
    def hold(pod):
        if pod.env["MLC_INDEX"] == "0":
            while True:
                time.sleep(0.01)

    k8s_fake.time_scale = 0.01
    k8s_fake.script("mlc-", run=item_pod(hold=hold))
    outcome, _, store = execute(backend, tmp_path, map_spec(timeout=300), [1, 2])
    assert outcome.values == {"y": [None, 4]}
    items = store.get(outcome.run_id)["map"]["items"]
    assert [i["reason"] for i in items] == ["timeout", "done"]


def test_rerun_verify_of_a_map_on_the_cluster_every_item_or_one(
    backend, k8s_fake, tmp_path, monkeypatch
):
    from mlcontainer_magics.core import snapshots

    k8s_fake.script("mlc-", run=item_pod())
    outcome, _, store = execute(backend, tmp_path, map_spec(parallel=2), [4, 5, 6])
    monkeypatch.setattr(backend, "base_image_id", lambda base: ENV.base_image_id)
    again, problems = snapshots.rerun(store, outcome.run_id, backend, verify=True)
    assert problems == [] and again.values == {"y": [8, 10, 12]}
    one, problems = snapshots.rerun(store, outcome.run_id, backend, verify=True, item=2)
    assert problems == [] and one.values == {"y": [12]}
    # The one item's Job: a single completion, its pod given index 0 of a one-item folder.
    assert sorted(j["spec"]["completions"] for j in k8s_fake.list("jobs", NS)) == [1, 3, 3]


def test_interrupt_deletes_the_job_and_its_pods(backend, k8s_fake, tmp_path):
    def hold(pod):
        while not pod.cancelled:
            time.sleep(0.01)

    k8s_fake.script("mlc-", run=item_pod(hold=hold))
    interrupt_main_thread_when(lambda: running(k8s_fake) == 2)
    with pytest.raises(KeyboardInterrupt):
        execute(backend, tmp_path, map_spec(parallel=2), [1, 2, 3, 4])
    assert not k8s_fake.list("jobs", NS) and not k8s_fake.list("secrets", NS)
    k8s_fake.wait_for(lambda: not k8s_fake.list("pods", NS))


def test_stop_ends_every_item_stopped(backend, k8s_fake, workdirs):
    def hold(pod):
        while not pod.cancelled:
            time.sleep(0.01)

    k8s_fake.script("mlc-", run=item_pod(hold=hold))
    spec = map_spec(parallel=2)
    workdir = map_workdir(workdirs, spec, [1, 2, 3])
    rec = Recorder()
    followed = lambda: any(  # noqa: E731 - the backend follows both pods
        phase == "mapped" and info["running"] == 2 for phase, info in list(rec.events)
    )
    stopper = threading.Thread(
        target=lambda: (k8s_fake.wait_for(followed), backend.stop("map-stop"))
    )
    stopper.start()
    results = backend.run_map(
        spec, ENV, workdir, run_id="map-stop", count=3, parallel=2, events=rec.event
    )
    stopper.join()
    assert [r.reason for r in results] == ["stopped"] * 3
    assert [r.attempts for r in results] == [1, 1, 0]
    assert not k8s_fake.list("jobs", NS)


def test_cancel_deletes_the_job_and_the_items_end_stopped(backend, k8s_fake, workdirs):
    def hold(pod):
        while not pod.cancelled:
            time.sleep(0.01)

    k8s_fake.script("mlc-", run=item_pod(hold=hold))
    spec = map_spec(parallel=1)
    workdir = map_workdir(workdirs, spec, [1, 2])
    cancel = threading.Event()
    threading.Thread(
        target=lambda: (k8s_fake.wait_for(lambda: k8s_fake.list("pods", NS)), cancel.set())
    ).start()
    results = backend.run_map(spec, ENV, workdir, run_id="map-c", count=2, cancel=cancel)
    assert [r.reason for r in results] == ["stopped", "stopped"]
    assert not k8s_fake.list("jobs", NS)


def running(fake) -> int:
    return sum(1 for p in fake.list("pods", NS) if p["status"].get("phase") == "Running")


def test_an_image_the_cluster_cannot_pull_fails_every_item_and_the_job_goes(
    backend, k8s_fake, workdirs
):
    k8s_fake.script("mlc-", scenario="image_pull")
    spec = map_spec(parallel=2)
    workdir = map_workdir(workdirs, spec, [1, 2, 3])
    results = backend.run_map(spec, ENV, workdir, run_id="map-pull", count=3, parallel=2)
    assert [(r.reason, r.attempts) for r in results] == [("failed", 0)] * 3
    assert all("cannot pull the image" in r.message for r in results)
    assert not k8s_fake.list("jobs", NS) and not k8s_fake.list("secrets", NS)


def map_workdir(workdirs, spec, items):
    """A map's folder as core/maps.py writes it: the items and the manifest's map block."""
    workdir = workdirs(spec)
    entries = maps.write_items(dict(enumerate(items)), workdir, "x")
    manifest = json.loads((workdir / "manifest.json").read_text())
    manifest["map"] = maps.map_manifest("x", entries)
    (workdir / "manifest.json").write_text(json.dumps(manifest))
    return workdir


def test_items_too_large_for_a_secret_fail_before_anything_is_sent(backend, k8s_fake, tmp_path):
    items = ["x" * (400 * 1024) for _ in range(3)]
    with pytest.raises(SpecError, match="items"):
        execute(backend, tmp_path, map_spec(code="y = len(x)\n"), items)
    assert not k8s_fake.list("secrets", NS) and not k8s_fake.list("jobs", NS)


@pytest.fixture
def watched(k8s_fake, monkeypatch):
    """(backend, built, pushed): a backend whose environment's build (by its Docker backend)
    and push are noted, not done."""
    from mlcontainer_magics.backends.kubernetes import registry as registries

    built, pushed = [], []

    class Docker:  # the environment's build
        client = None

        def ensure_environment(self, env_spec, **kw):
            built.append(env_spec)
            return ENV

    monkeypatch.setattr(registries, "push_image", lambda *a, **k: pushed.append(a) or IMAGE)
    backend = backend_for(k8s_fake, registry="127.0.0.1:5000", docker_backend=Docker())
    return backend, built, pushed


def test_a_map_too_large_for_the_secret_is_refused_before_the_image_is_built_or_pushed(
    watched, k8s_fake, tmp_path
):
    """Plain data whose JSON adds up to over 1 MiB (no array, no text: sized as JSON) is
    refused by the backend's check_map before ensure_environment: nothing was built nor pushed,
    no Secret nor Job created, no snapshot recorded as running."""
    backend, built, pushed = watched
    items = [[0.123456789] * 30_000 for _ in range(4)]  # about 390 KiB of JSON each
    with pytest.raises(SpecError) as info:
        execute(backend, tmp_path, map_spec(code="y = len(x)\n"), items)
    message = str(info.value)
    assert "at least 1.5" in message and "4 items of" in message and "1 MiB" in message
    assert "nothing was built or pushed" in message and "Docker backend" in message
    assert built == [] and pushed == []
    assert k8s_fake.list("secrets", NS) == [] and k8s_fake.list("jobs", NS) == []
    assert Store(tmp_path / "store").count() == 0
    # The same items, small enough, go on to the build and the push.
    k8s_fake.script("mlc-", run=item_pod(compute=len))
    outcome, _, _ = execute(backend, tmp_path, map_spec(code="y = len(x)\n"), [[1.0] * 10] * 4)
    assert outcome.ok and len(built) == 1 and len(pushed) == 1


def big_set(k: int) -> set:
    """About 340 KiB pickled (70,000 ints of 5 bytes each), and not JSON: sent as pickle."""
    return set(range(100_000 + k * 70_000, 100_000 + (k + 1) * 70_000))


def test_a_map_of_pickled_items_too_large_for_the_secret_is_refused_before_the_build(
    watched, k8s_fake, tmp_path
):
    """Items sent as pickle (sets, which JSON has not) adding up to over 1 MiB are measured by
    pickling them as far as the Secret's limit, and refused before the image is built or
    pushed; before, they counted as 0 and failed only when the Secret was made."""
    backend, built, pushed = watched
    items = [big_set(k) for k in range(4)]
    assert {transfer.choose_format(i) for i in items} == {"pickle"}
    with pytest.raises(SpecError) as info:
        execute(backend, tmp_path, map_spec(code="y = len(x)\n"), items)
    message = str(info.value)
    assert re.search(
        r"at least 1\.\d+ MiB \(4 items of 1\.\d+ MiB, the largest 342\.0 KiB\)", message
    )
    assert "over the 1 MiB" in message and "nothing was built or pushed" in message
    assert built == [] and pushed == []
    assert k8s_fake.list("secrets", NS) == [] and k8s_fake.list("jobs", NS) == []
    assert Store(tmp_path / "store").count() == 0

    # A shared --in value sent as pickle counts too, whatever the items.
    store = Store(tmp_path / "shared")
    spec = map_spec(code="y = len(x)\n", inputs=("table",))
    table = {(i, i + 1): i for i in range(100_000)}  # tuple keys: pickle, about 1.2 MiB
    with pytest.raises(SpecError, match=r"the shared --in values 1\.\d+ MiB"):
        maps.execute_map(spec, backend, inputs={"x": [{1}], "table": table}, store=store)
    assert built == [] and pushed == [] and store.count() == 0

    # Pickled items that fit go on to the build and the push, and run.
    k8s_fake.script("mlc-", run=item_pod(compute=len, read=pickle.loads))
    outcome, _, _ = execute(backend, tmp_path / "small", map_spec(code="y = len(x)\n"), items[:2])
    assert outcome.ok and outcome.values == {"y": [70_000, 70_000]}
    assert len(built) == 1 and len(pushed) == 1


def test_an_item_that_cannot_be_pickled_is_named_before_any_size_or_build(
    watched, k8s_fake, tmp_path
):
    """An item pickle cannot write is the clear error it always was (check_inputs, in
    items_of), not a size nor pickle's own error, and nothing is built."""
    backend, built, pushed = watched
    with pytest.raises(SpecError, match=r"^--map x\[1\]: a lock cannot be sent into a container"):
        execute(backend, tmp_path, map_spec(), [{1}, threading.Lock()])
    assert built == [] and pushed == [] and k8s_fake.list("secrets", NS) == []


def test_map_sizes_are_exact_under_the_limit_and_over_it_when_the_total_is():
    small = [{1, 2}, {(1, 2): 3}, [1, 2]]
    exact = [len(pickle.dumps(v, protocol=transfer.PICKLE_PROTOCOL)) for v in small[:2]] + [6]
    assert maps.map_sizes([], small, 1024 * 1024) == ([], exact)
    assert maps.map_sizes([], small, None) == ([], [0, 0, 6])  # no bound: nothing pickled
    # Over: the sizes add up to more than the limit, each pickled no further than what was
    # left of it (a value after the limit is reached costs one frame at most).
    shared, sizes = maps.map_sizes([big_set(0)], [big_set(k) for k in range(1, 20)], 500_000)
    assert shared == [len(pickle.dumps(big_set(0), protocol=transfer.PICKLE_PROTOCOL))]
    assert shared[0] + sum(sizes) > 500_000
    assert sizes[0] > 500_000 - shared[0] and all(0 < n <= 64 * 1024 + 100 for n in sizes[1:])


def test_check_map_size_counts_items_shared_values_code_and_runner():
    spec = map_spec()
    indexed.check_map_size(spec, [300 * 1024] * 3, 50 * 1024, runner=20_000)  # < 1 MiB
    with pytest.raises(
        SpecError,
        match=r"3 items of 900.0 KiB, the largest 300.0 KiB; the "
        r"shared --in values 150.0 KiB",
    ):
        indexed.check_map_size(spec, [300 * 1024] * 3, 150 * 1024, runner=20_000)


def test_an_old_cluster_shares_one_backoff_limit_and_is_told_so_once(tmp_path, monkeypatch):
    from k8s_fake import FakeKubernetes

    with FakeKubernetes(namespaces=(NS,), k8s_version="1.28") as fake:
        fake.write_kubeconfig(tmp_path / "kubeconfig")
        backend = backend_for(fake)
        monkeypatch.setattr(backend, "ensure_environment", lambda *a, **k: ENV)
        fake.script("mlc-", run=item_pod())
        rec = Recorder()
        outcome, _, _ = execute(backend, tmp_path, map_spec(retries=1), [1, 2], rec=rec)
        assert outcome.ok and outcome.values == {"y": [2, 4]}
        (job,) = fake.list("jobs", NS)
        assert job["spec"]["backoffLimit"] == 2 and "backoffLimitPerIndex" not in job["spec"]
        assert "Kubernetes 1.28 has no per-item retries" in rec.text("stderr")
        again = Recorder()
        execute(backend, tmp_path / "again", map_spec(retries=1), [1, 2], rec=again)
        assert "per-item retries" not in again.text("stderr")

        # Without per-item retries, an item that fails ends the items still running.
        def hold(pod):
            while pod.env["MLC_INDEX"] != "0" and not pod.cancelled:
                time.sleep(0.01)

        fake.script("mlc-", run=item_pod(fails=lambda index, attempt: index == 0, hold=hold))
        outcome, _, store = execute(backend, tmp_path / "shared", map_spec(parallel=2), [1, 2, 3])
        items = store.get(outcome.run_id)["map"]["items"]
        assert items[0]["reason"] == "failed" and "ValueError: item 0" in items[0]["error"]
        assert items[1]["reason"] != "done" and "BackoffLimitExceeded" in items[1]["error"]
        assert items[2] == {**items[2], "reason": "failed", "attempts": 0}
        assert "BackoffLimitExceeded" in items[2]["error"] and outcome.values["y"] == [None] * 3


# -- export --k8s of a map ----------------------------------------------------------------------


def test_export_of_a_map_writes_its_indexed_job(backend, k8s_fake, tmp_path, monkeypatch):
    import yaml

    from mlcontainer_magics.backends.export import export
    from mlcontainer_magics.runner import mlc_runner

    monkeypatch.setenv("MLCONTAINER_K8S_NAMESPACE", "team-a")
    k8s_fake.script("mlc-", run=item_pod())
    spec = map_spec(parallel=2, retries=3, network="none", env=(("API_KEY", "s3cret"),))
    outcome, _, store = execute(backend, tmp_path, spec, [10, 20, 30, 40, 50])
    assert outcome.ok

    dest = export(store, outcome.run_id, tmp_path / "export", backend=None, k8s=True)
    text = (dest / "job.yaml").read_text()
    docs = list(yaml.safe_load_all(text))
    assert [d["kind"] for d in docs] == ["Secret", "Job", "NetworkPolicy"]
    for doc in docs:
        validate(doc)
    secret, job, _ = docs
    assert job["metadata"]["namespace"] == "team-a"
    assert job["metadata"]["annotations"][indexed.ANNOTATION_MAP] == "x"
    js = job["spec"]
    assert (js["completionMode"], js["completions"], js["parallelism"]) == ("Indexed", 5, 2)
    assert js["backoffLimitPerIndex"] == 3 and "backoffLimit" not in js
    (container,) = js["template"]["spec"]["containers"]
    assert container["image"] == ENV.image
    assert {"name": "MLC_INDEX", "valueFrom": INDEX_REF} in container["env"]
    assert "MLC_ONE_STREAM" not in json.dumps(container)  # kubectl logs reads it plainly
    # The Secret holds every item and a manifest whose map block the runner reads.
    payload = {k: base64.b64decode(v) for k, v in secret["data"].items()}
    manifest = json.loads(payload["manifest.json"])
    assert "x" not in manifest["inputs"] and manifest["map"]["count"] == 5
    for index in range(5):
        name, entry = mlc_runner.map_item(manifest["map"], {"JOB_COMPLETION_INDEX": str(index)})
        key = entry["file"].replace("/", "__")
        assert name == "x" and json.loads(payload[key]) == [10, 20, 30, 40, 50][index]
    assert not any(k.startswith("in__x.") for k in payload)  # not the whole value too
    assert payload["env.API_KEY"] == b"" and "s3cret" not in text
    name = job["metadata"]["name"]
    assert f"-l batch.kubernetes.io/job-name={name} --prefix" in text
    assert "a map over x (5 items)" in text and "backoffLimit: 15" in text


# -- through the magic, the real runner in each pod ---------------------------------------------

# The real runner, its /mlc moved to the folder that stands for the pod's (argv[1]).
BOOT = (
    "import sys; root = sys.argv[1]; sys.path.insert(0, root); import runner as r; "
    "r.MLC, r.CELL, r.OUT, r.COLLECTED = root, root + '/cell.py', root + '/out', "
    "root + '/collected'; sys.exit(r.main())"
)


def real_runner_pod(pod):
    """A ``run=`` callback: the pod's container is the real runner (a process of this machine)
    with the Secret's files in a folder standing for /mlc and the pod's env (MLC_INDEX from
    the completion-index annotation, as the kubelet resolves it); its output is the pod's
    log, its --out values taken over exec as from a pod."""
    import os
    import shutil
    import signal
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    from test_k8s_backend import runner_exec

    root = Path(tempfile.mkdtemp(prefix="mlc-pod-"))
    try:
        for path, data in pod.files.items():
            target = root / Path(path).relative_to("/mlc")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        (root / "out").mkdir()
        pod.on_exec(lambda command: runner_exec(root, command))
        env = {"PATH": os.environ["PATH"], **pod.env, "HOME": str(root)}
        proc = subprocess.Popen(
            [sys.executable, "-c", BOOT, str(root)],
            env=env,
            cwd=root,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        pod.on_signal(lambda name: proc.send_signal(getattr(signal, name)))
        for line in proc.stdout:
            pod.write(line.decode())
        return proc.wait()
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def k8s_ip(ip, k8s_fake, tmp_path, monkeypatch):
    """The magics' shell, its Kubernetes backend on the fake (its environment stubbed: no
    engine, no registry), its store in tmp_path."""
    from mlcontainer_magics.frontends import magics

    for key, value in [
        ("kubeconfig", str(k8s_fake.kubeconfig)),
        ("k8s_namespace", NS),
        ("registry", "127.0.0.1:5000"),
    ]:
        ip.run_line_magic("config", f"KubernetesConfig.{key} = {value!r}")
    ip.run_line_magic("config", f"ContainerizeMagics.store_dir = {str(tmp_path / 'store')!r}")
    monkeypatch.setenv("MLCONTAINER_DISPLAY", "text")
    monkeypatch.setattr(magics, "_publish", lambda bundle: None)
    containerize = ip.magics_manager.registry["ContainerizeMagics"]
    monkeypatch.setattr(
        containerize.backend_for("kubernetes"), "ensure_environment", lambda *a, **k: ENV
    )
    return ip, containerize.store


def test_the_magic_maps_over_the_cluster_with_the_real_runner_in_each_pod(k8s_ip, k8s_fake, capsys):
    ip, store = k8s_ip
    k8s_fake.script("mlc-", run=real_runner_pod)
    xs = [3, 1, 4, 1, 5, 9, 2, 6]
    ip.user_ns.update(xs=xs, k=10)
    ip.run_cell_magic(
        "containerize",
        "--backend kubernetes -n kfan --map xs --parallel 3 --in k --out y",
        "import os\n"
        "print('item', os.environ['MLC_INDEX'], xs)\n"
        "y = xs * k + int(os.environ['MLC_INDEX'])\n",
    )
    assert ip.user_ns["y"] == [x * 10 + i for i, x in enumerate(xs)]  # a loop in the kernel
    out = capsys.readouterr().out
    assert all(f"item {i} {x}\n" in out for i, x in enumerate(xs))
    (job,) = k8s_fake.list("jobs", NS)
    assert (job["spec"]["completions"], job["spec"]["parallelism"]) == (8, 3)
    assert k8s_fake.peak_running[(NS, job["metadata"]["name"])] <= 3
    record = store.get("kfan")
    assert record["status"] == "done" and record["backend"] == "kubernetes"
    assert record["map"]["count"] == 8
    assert [i["reason"] for i in record["map"]["items"]] == ["done"] * 8


def test_the_magic_reports_a_failing_item_with_its_traceback(k8s_ip, k8s_fake, capsys):
    from mlcontainer_magics.errors import MapError

    ip, store = k8s_ip
    k8s_fake.script("mlc-", run=real_runner_pod)
    ip.user_ns.update(xs=[1, 2, 0, 4])
    with pytest.raises(MapError) as info:
        ip.run_cell_magic("containerize", "--backend kubernetes --map xs --out y", "y = 12 // xs\n")
    message = str(info.value)
    assert "item 2" in message and "1 of 4 items" in message
    assert "y = 12 // xs" in message and "ZeroDivisionError" in message
    ip.run_cell_magic(
        "containerize", "--backend kubernetes --map xs --out y --no-raise-error", "y = 12 // xs\n"
    )
    assert ip.user_ns["y"] == [12, 6, None, 3]
