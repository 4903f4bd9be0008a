"""The Kubernetes backend on a cluster that misbehaves as real ones do: log streams cut by load
balancers, logs rotated by the kubelet, grace periods, the 1.31+ Job conditions, a busy API
server, sidecars, quotas and webhooks, queues and evictions. One test (or more) per way the
fake used to be kinder than a real cluster; each failed on the backend before it learnt."""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time

import pytest
from test_k8s_backend import (
    ENV,
    NS,
    Recorder,
    backend_for,
    docker_pod,
    make_spec,
    run,
    runner_pod,
)

from mlcontainer_magics.backends.kubernetes import backend as k8s_backend
from mlcontainer_magics.core import transfer
from mlcontainer_magics.core.backend import Environment
from mlcontainer_magics.errors import ClusterAuthError, KubernetesError, NamespaceMissing
from mlcontainer_magics.runner import OUTPUTS_MARK

pytest.importorskip("kubernetes")

pytest_plugins = ["k8s_fake", "registry_fixture"]


@pytest.fixture
def backend(k8s_fake):
    return backend_for(k8s_fake)


def start_run(backend, workdirs, spec, run_id="run-1"):
    """backend.run in a thread: (thread, recorder, box with "result" once it ends)."""
    rec, box = Recorder(), {}

    def go():
        box["result"], _, _ = run(backend, workdirs, spec, run_id=run_id, rec=rec)

    thread = threading.Thread(target=go, daemon=True)
    thread.start()
    return thread, rec, box


def watch_isolation(fake, job: str):
    """Record every moment a pod of ``job`` has a container not yet ended while the run's
    NetworkPolicy is missing. Returns (stop, violations)."""
    violations: list[str] = []
    stop = threading.Event()

    def watch():
        while not stop.is_set():
            live = [
                p["metadata"]["name"]
                for p in fake.pods_of(job, NS)
                if p["status"].get("phase") == "Running"
            ]
            if live and fake.get("networkpolicies", job, NS) is None:
                violations.append(f"{live} ran without its NetworkPolicy")
            time.sleep(0.02)

    threading.Thread(target=watch, daemon=True).start()
    return stop, violations


def in_order_once(got: list[str], expected: list[str]) -> bool:
    """``got`` is ``expected`` with perhaps some lines missing: nothing repeated or reordered."""
    it = iter(expected)
    return all(any(line == e for e in it) for line in got)


# -- 1. log connections drop --------------------------------------------------------------------


def test_a_log_cut_many_times_arrives_whole_in_order_and_once(backend, k8s_fake, workdirs):
    # The kubelet splits the log at newlines only: \r and \x1e stay inside a line.
    lines = [f"line {i:04d} \x1e kept \r progress {i}" for i in range(400)]
    # Cut every 0.1 s (or at 20 KB): a stream opened again starts from the second of the
    # last line read (the API's sinceTime has whole seconds), so a cut needs a moment more.
    k8s_fake.drop_streams(every_bytes=(20_000, 20_000), every_seconds=0.1)
    k8s_fake.script("mlc-", logs=lines, line_seconds=0.02)
    result, rec, _ = run(backend, workdirs)
    assert result.reason == "done", result
    assert rec.text() == "".join(line + "\n" for line in lines)
    assert k8s_fake.dropped > 20  # more than the backend used to put up with


def test_a_60_s_cell_with_its_log_cut_every_5_s_ends_done_isolated_throughout(
    backend, k8s_fake, workdirs
):
    def cell(pod):
        for i in range(60):
            pod.log(f"tick {i}")
            time.sleep(1)
        return 0

    k8s_fake.drop_streams(every_bytes=(1 << 30, 1 << 30), every_seconds=5)
    k8s_fake.script("mlc-", run=cell)
    stop, violations = watch_isolation(k8s_fake, "mlc-run-1")
    try:
        result, rec, _ = run(backend, workdirs, make_spec(network="none"))
    finally:
        stop.set()
    assert result.reason == "done", result
    assert rec.text() == "".join(f"tick {i}\n" for i in range(60))
    assert k8s_fake.dropped >= 10 and violations == []
    assert k8s_fake.get("networkpolicies", "mlc-run-1", NS) is None  # gone after the pod


# -- 2. termination takes a grace period ---------------------------------------------------------


@pytest.mark.docker
@pytest.mark.usefixtures("no_leaks")
def test_a_stop_ends_the_real_runner_as_pid_1_within_5_s_reported_stopped(
    k8s_fake, docker_engine, namespace, tmp_path, workdirs
):
    """The pod's container runs the real runner on the real engine with no init process, as a
    kubelet starts it: PID 1, so SIGTERM does nothing unless the runner handles it."""
    k8s_fake.script("mlc-", run=docker_pod(docker_engine, namespace, tmp_path))
    backend = backend_for(k8s_fake)
    env = Environment("python:3.11-slim", ENV.image_id, ENV.base_image_id)
    spec = make_spec("import time\nprint('started', flush=True)\ntime.sleep(600)\n")
    rec, box = Recorder(), {}

    def go():
        workdir = workdirs(spec)
        box["result"] = backend.run(spec, env, workdir, run_id="run-1", output=rec.out)

    thread = threading.Thread(target=go, daemon=True)
    thread.start()
    rec.wait_for_text("started", timeout=60)
    asked = time.monotonic()
    assert backend.stop("run-1")
    thread.join(30)
    took = time.monotonic() - asked
    # (Its exit code may be gone with the pod: the kubelet removes it once the runner exits.)
    assert box["result"].reason == "stopped" and box["result"].exit_code in (143, None)
    assert took < 5, f"the stop took {took:.1f} s"
    assert "stopped by SIGTERM" in box["result"].stderr


def test_isolation_outlives_a_pod_that_takes_its_whole_grace_period(backend, k8s_fake, workdirs):
    k8s_fake.time_scale = 0.1  # a grace period of 30 s lasts 3 s
    k8s_fake.script("mlc-", scenario="hang", logs=["started"], sigterm="ignore")
    stop, violations = watch_isolation(k8s_fake, "mlc-run-1")
    thread, rec, box = start_run(backend, workdirs, make_spec(network="none"))
    rec.wait_for_text("started")
    asked = time.monotonic()
    backend.stop("run-1")
    thread.join(30)
    stop.set()
    assert box["result"].reason == "stopped"
    assert time.monotonic() - asked > 2.5  # it ran on to SIGKILL, isolated all along
    assert violations == []
    k8s_fake.wait_for(lambda: k8s_fake.get("networkpolicies", "mlc-run-1", NS) is None)


# -- 3. logs rotate ------------------------------------------------------------------------------


def test_a_50_mb_out_value_survives_two_log_rotations_and_five_dropped_connections(
    backend, k8s_fake, workdirs
):
    value = os.urandom(50 << 20)
    lines = [f"{i:06d} " + "p" * 1000 for i in range(25_000)]  # 25 MB of prints
    k8s_fake.log_rotate_bytes = 10 << 20  # the kubelet's default containerLogMaxSize
    k8s_fake.drop_streams(every_bytes=(64 << 10, 12 << 20), times=5)
    files = {
        "outputs.json": json.dumps({"x": {"file": "x.bin", "format": "bytes"}}).encode(),
        "x.bin": value,
    }
    k8s_fake.script("mlc-", run=runner_pod(lines, **files))
    result, rec, workdir = run(backend, workdirs, make_spec(outputs=("x",)))
    assert result.reason == "done", result
    values, _ = transfer.read_outputs(workdir / "out", ["x"])
    assert hashlib.sha256(values["x"]).digest() == hashlib.sha256(value).digest()
    assert k8s_fake.dropped == 5 and k8s_fake.rotations >= 2, (k8s_fake.dropped, k8s_fake.rotations)
    # Prints rotated away while disconnected cannot be read back; none comes twice or late.
    got = rec.text().splitlines()
    assert in_order_once(got, lines), f"{len(got)} of {len(lines)} lines, out of order"


# -- 4. Job conditions: FailureTarget first, Failed once the pod is gone -------------------------


def test_a_deadline_is_a_timeout_though_failed_comes_only_after_the_grace_period(
    backend, k8s_fake, workdirs
):
    k8s_fake.time_scale = 0.25  # the 2 s deadline passes in 0.5 s; the 30 s grace lasts 7.5 s
    k8s_fake.final_condition_delay = 6.0  # a busy Job controller: Failed comes late
    k8s_fake.script("mlc-", scenario="hang", logs=["working"], sigterm="ignore")
    result, _, _ = run(backend, workdirs, make_spec(timeout=2))
    assert result.reason == "timeout", result

    def conditions():
        return [c["type"] for c in k8s_fake.get("jobs", "mlc-run-1", NS)["status"]["conditions"]]

    assert conditions() == ["FailureTarget"]  # the run's answer came before Failed did
    k8s_fake.wait_for(lambda: conditions() == ["FailureTarget", "Failed"])


# -- 5. transient faults -------------------------------------------------------------------------


def test_a_busy_cluster_and_a_slow_registry_do_not_fail_a_run(backend, k8s_fake, workdirs):
    faults = [
        k8s_fake.fault(429, method="POST", path="/jobs$", times=2),
        k8s_fake.fault(503, method="GET", path=r"/pods/[^/]+$", times=2),
        k8s_fake.fault(500, method="GET", path=r"/jobs/[^/]+$", times=2),
        k8s_fake.fault("watch-error", path="/pods$", times=2),
        k8s_fake.fault("reset", method="POST", path="/networkpolicies$", times=1),
    ]
    k8s_fake.script("mlc-", logs=["hello"], pull_failures=3, pending_seconds=1, run_seconds=1)
    result, rec, _ = run(backend, workdirs, make_spec(network="none"))
    assert result.reason == "done", result
    assert rec.text() == "hello\n"
    assert [f.hits for f in faults] == [f.times for f in faults]


def test_faults_after_the_log_ended_do_not_fail_the_run(backend, k8s_fake, workdirs):
    def cell(pod):
        pod.log("finished")
        k8s_fake.fault(500, method="GET", path=r"/pods/[^/]+$", times=4)
        k8s_fake.fault(503, method="GET", path=r"/jobs/[^/]+$", times=2)
        return 0

    k8s_fake.script("mlc-", run=cell)
    result, rec, _ = run(backend, workdirs)
    assert result.reason == "done", result
    assert k8s_fake.get("jobs", "mlc-run-1", NS) is not None  # kept for its TTL, not deleted


# -- 6. a 403 is not only RBAC, a 422 names its fields ---------------------------------------------

QUOTA = (
    'secrets "mlc-run-1" is forbidden: exceeded quota: objects, requested: count/secrets=1, '
    "used: count/secrets=10, limited: count/secrets=10"
)
TERMINATING = (
    'secrets "mlc-run-1" is forbidden: unable to create new content in namespace mlc because '
    "it is being terminated"
)
WEBHOOK = (
    'admission webhook "validation.gatekeeper.sh" denied the request: [team-label] you must '
    'provide labels: {"team"}'
)
RBAC = (
    'secrets is forbidden: User "alice" cannot create resource "secrets" in API group "" in '
    'the namespace "mlc"'
)


@pytest.mark.parametrize(
    "message, kind, says",
    [
        (QUOTA, KubernetesError, "ResourceQuota of namespace mlc"),
        (TERMINATING, NamespaceMissing, "is being deleted"),
        (WEBHOOK, KubernetesError, "admission policy of the cluster refused"),
        (RBAC, ClusterAuthError, "RBAC Role"),
    ],
    ids=["quota", "terminating", "webhook", "rbac"],
)
def test_a_403_is_explained_by_the_servers_message(
    backend, k8s_fake, workdirs, message, kind, says
):
    k8s_fake.fault(403, method="POST", path="/secrets$", message=message, reason="Forbidden")
    with pytest.raises(kind) as info:
        run(backend, workdirs)
    text = str(info.value)
    assert says in text and message in text
    assert ("RBAC" in text) == (message is RBAC)
    assert k8s_fake.list("jobs", NS) == []


def test_a_422_names_the_setting_to_change(backend, k8s_fake, workdirs):
    message = (
        'Job.batch "mlc-run-1" is invalid: spec.template.spec.tolerations[0].operator: '
        "Invalid value: \"Exists\": value must be empty when `operator` is 'Exists'"
    )
    k8s_fake.fault(422, method="POST", path="/jobs$", message=message, reason="Invalid")
    with pytest.raises(KubernetesError, match="Check KubernetesConfig.tolerations") as info:
        run(backend, workdirs)
    assert "422 Invalid" in str(info.value)


# -- 7. a sidecar listed first -------------------------------------------------------------------


@pytest.mark.parametrize("code, reason", [(0, "done"), (3, "failed")])
def test_a_sidecar_listed_first_does_not_hide_the_cells_container(
    backend, k8s_fake, workdirs, code, reason
):
    k8s_fake.script("mlc-", logs=["from the cell"], exit_code=code, sidecar="aaa-mesh-proxy")
    result, rec, _ = run(backend, workdirs)
    pod = k8s_fake.pods_of("mlc-run-1", NS)[0]
    assert [c["name"] for c in pod["status"]["containerStatuses"]] == ["aaa-mesh-proxy", "cell"]
    assert (result.reason, result.exit_code) == (reason, code)
    assert rec.text() == "from the cell\n"


# -- 8. the oldest supported cluster ---------------------------------------------------------------


def test_a_run_on_a_1_29_cluster(tmp_path, workdirs):
    from k8s_fake import FakeKubernetes

    from mlcontainer_magics.backends.kubernetes.objects import OLDEST_KUBERNETES

    with FakeKubernetes(namespaces=(NS,), k8s_version=OLDEST_KUBERNETES) as fake:
        fake.write_kubeconfig(tmp_path / "kubeconfig")
        fake.script("mlc-", logs=["on 1.29"])
        backend = backend_for(
            fake, tolerations=[{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}]
        )
        result, rec, _ = run(backend, workdirs, make_spec(network="none", timeout=30))
        conditions = [c["type"] for c in fake.get("jobs", "mlc-run-1", NS)["status"]["conditions"]]
    assert result.reason == "done" and rec.text() == "on 1.29\n"
    assert conditions == ["SuccessCriteriaMet", "Complete"]


# -- 9. queues, evictions, missing namespaces ------------------------------------------------


def test_a_job_held_by_a_queue_waits_as_queued_then_runs(k8s_fake, workdirs, monkeypatch):
    monkeypatch.setattr(k8s_backend, "NO_POD_GRACE", 0.5)
    k8s_fake.script("mlc-", logs=["admitted"], suspended_seconds=2)
    backend = backend_for(k8s_fake, schedule_timeout=0.5)
    result, rec, _ = run(backend, workdirs)
    assert result.reason == "done", result
    assert rec.text() == "admitted\n"
    assert any("queued" in str(info.get("message")) for _, info in rec.events)


def test_a_job_queued_too_long_fails_saying_so_and_goes(k8s_fake, workdirs, monkeypatch):
    monkeypatch.setattr(k8s_backend, "PULL_PATIENCE", 0.5)
    k8s_fake.script("mlc-", logs=["never"], suspended_seconds=60)
    backend = backend_for(k8s_fake, schedule_timeout=0.5)
    result, _, _ = run(backend, workdirs)
    assert result.reason == "failed" and "suspended (queued)" in result.message
    k8s_fake.wait_for(lambda: k8s_fake.get("jobs", "mlc-run-1", NS) is None)


def test_an_evicted_pod_says_the_cluster_took_it(backend, k8s_fake, workdirs):
    k8s_fake.script("mlc-", scenario="hang", logs=["working"], evict_after=0.3)
    result, _, _ = run(backend, workdirs)
    assert result.reason == "killed" and result.exit_code == 137
    assert "TerminationByKubelet" in result.message and "low on resource" in result.message


def test_a_namespace_that_does_not_exist_lists_no_runs(k8s_fake):
    assert backend_for(k8s_fake, k8s_namespace="nope").running() == []


def test_status_says_the_servers_version_or_why_it_is_down(k8s_fake, tmp_path):
    up = backend_for(k8s_fake).status()
    assert up == {"up": True, "version": "v1.37.0-fake", "message": None}
    k8s_fake.write_kubeconfig(tmp_path / "gone")
    config = json.loads((tmp_path / "gone").read_text())
    config["clusters"][0]["cluster"]["server"] = "http://127.0.0.1:9"
    (tmp_path / "gone").write_text(json.dumps(config))
    down = backend_for(k8s_fake, kubeconfig=str(tmp_path / "gone")).status()
    assert down["up"] is False and "Cannot reach the Kubernetes API server" in down["message"]


def test_a_pod_evicted_before_it_ran_ends_the_run_saying_so(backend, k8s_fake, workdirs):
    """Phase Failed, no container ever started: its log is a 400 for good, not a wait."""
    k8s_fake.script("mlc-", scenario="evicted")
    result, _, _ = run(backend, workdirs)
    assert result.reason == "killed" and "low on resource" in result.message


def test_a_job_made_though_its_answer_was_lost_runs(backend, k8s_fake, workdirs):
    """The create is carried out, its answer lost: the retry's 409 means it was made."""
    lost = k8s_fake.fault("lost", method="POST", path="/jobs$")
    k8s_fake.script("mlc-", logs=["once"])
    result, rec, _ = run(backend, workdirs)
    assert lost.hits == 1 and result.reason == "done" and rec.text() == "once\n"
    assert len(k8s_fake.list("jobs", NS)) == 1


def test_a_stop_while_the_values_come_back_is_a_stop(backend, k8s_fake, workdirs):
    """The Stop comes from another thread (the sidebar's) while an exec is open: its calls
    must stay plain HTTP (the client's stream() swaps its ApiClient's request method)."""

    def exec_then_stopped(command):
        backend.stop("run-1")
        return b"", b"the pod is going", 1

    def cell(pod):
        pod.on_exec(exec_then_stopped)
        offer = {"files": [{"name": "x.json", "size": 3, "sha256": "0" * 64}]}
        pod.log(OUTPUTS_MARK + json.dumps(offer))
        while not pod.cancelled:
            time.sleep(0.01)
        return 143

    k8s_fake.script("mlc-", run=cell)
    result, _, _ = run(backend, workdirs, make_spec(outputs=("x",)))
    assert result.reason == "stopped", result


def test_lines_of_the_two_streams_out_of_time_order_are_all_fed_and_a_replay_is_not():
    from mlcontainer_magics.backends.kubernetes.backend import _LogPosition

    fed: list[str] = []
    position = _LogPosition()
    stamp = "2026-12-01T10:00:0{}.{:09d}Z "
    live = [stamp.format(1, 5) + "a\n", stamp.format(1, 3) + "b\n", stamp.format(1, 5) + "c\n"]
    for line in live:
        position.take(line, fed.append)
    assert fed == ["a\n", "b\n", "c\n"] and position.since() == "2026-12-01T10:00:01Z"
    position.reopen()  # the same second comes again, then what is new
    for line in [*live, stamp.format(1, 5) + "d\n", stamp.format(2, 0) + "e\n"]:
        position.take(line, fed.append)
    assert fed == ["a\n", "b\n", "c\n", "d\n", "e\n"]
