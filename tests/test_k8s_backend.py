"""The Kubernetes backend, with the official ``kubernetes`` client against the API fake.

Without Docker: the fake's pods play scripted logs (the runner's one-stream marks included).
With Docker (``-m docker``): environment images go to a real registry on 127.0.0.1, and the
fake's pod runs the pushed image with the real runner on the real engine, so everything is real
but the API server.
"""

from __future__ import annotations

import base64
import codecs
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pytest
from tornado.httpclient import HTTPClientError

from mlcontainer_magics.backends import make_backend
from mlcontainer_magics.backends.export import export
from mlcontainer_magics.backends.kubernetes import export as k8s_export
from mlcontainer_magics.backends.kubernetes import objects
from mlcontainer_magics.backends.kubernetes.backend import (
    ClusterAuthError,
    ClusterUnavailable,
    KubernetesBackend,
    KubernetesConfig,
    KubernetesError,
    NamespaceMissing,
    pod_progress,
)
from mlcontainer_magics.core import runs, transfer
from mlcontainer_magics.core.backend import Environment
from mlcontainer_magics.core.richoutput import StdoutDemux
from mlcontainer_magics.core.spec import EnvSpec, RunSpec
from mlcontainer_magics.errors import CapabilityMissing, MlcError, SpecError
from mlcontainer_magics.runner import (
    MARK,
    MLC_DIR,
    OUTPUTS_MARK,
    RUNNER_COMMAND,
    RUNNER_PATH,
    STDERR_MARK,
    mlc_runner,
    runner_source,
)

kubernetes = pytest.importorskip("kubernetes")
from kubernetes.client.rest import ApiException  # noqa: E402

pytest_plugins = ["k8s_fake", "registry_fixture", "pytest_jupyter.jupyter_server"]

NS = "mlc"
IMAGE = "127.0.0.1:5000/mlctest-env@sha256:" + "a" * 64
ENV = Environment(IMAGE, "sha256:" + "b" * 64, "sha256:" + "c" * 64)
LABEL = "org.mlcontainer.namespace"


# -- helpers -----------------------------------------------------------------------------------


def backend_for(fake, *, client=None, docker_backend=None, namespace="mlctest", **settings):
    """A backend whose KubernetesConfig comes from its parent's config, as under the magics."""
    from traitlets.config import Config, Configurable

    values = {
        "kubeconfig": str(fake.kubeconfig),
        "k8s_namespace": NS,
        "schedule_timeout": 60.0,
        **settings,
    }
    parent = Configurable(config=Config({"KubernetesConfig": values}))
    return KubernetesBackend(
        namespace=namespace, parent=parent, client=client, docker_backend=docker_backend
    )


@pytest.fixture
def backend(k8s_fake):
    return backend_for(k8s_fake)


def make_spec(code="print('hi')\n", **kw):
    return RunSpec(code=code, env_spec=EnvSpec("python:3.11-slim"), **kw)


class Recorder:
    """events and output callbacks that remember what they got, in order."""

    def __init__(self):
        self.events = []
        self.output = []
        self.seen = threading.Condition()

    def event(self, phase, **info):
        self.events.append((phase, info))

    def out(self, stream, text):
        with self.seen:
            self.output.append((stream, text))
            self.seen.notify_all()

    def text(self, stream="stdout"):
        return "".join(t for s, t in self.output if s == stream)

    def wait_for_text(self, text, timeout=10.0):
        with self.seen:
            assert self.seen.wait_for(lambda: text in self.text(), timeout), self.output

    @property
    def phases(self):
        return [p for p, _ in self.events]


def run(backend, workdirs, spec=None, run_id="run-1", rec=None):
    spec = spec or make_spec()
    rec = rec or Recorder()
    workdir = workdirs(spec)
    result = backend.run(spec, ENV, workdir, run_id=run_id, events=rec.event, output=rec.out)
    return result, rec, workdir


def stderr_line(text):
    return STDERR_MARK + json.dumps(text)


def runner_exec(root: Path, command: list[str]):
    """``pods/exec`` of a scripted pod, answered by the real runner (``--send``,
    ``--collected``) on ``root``, the folder that stands for /mlc."""
    assert command[:2] == list(RUNNER_COMMAND), command
    args = [a.replace(MLC_DIR, str(root)) for a in command[2:]]
    done = subprocess.run([sys.executable, str(RUNNER_PATH), *args], capture_output=True)
    return done.stdout, done.stderr, done.returncode


def runner_pod(lines=(), code=0, **files: bytes):
    """A ``run=`` callback that plays the runner in one-stream mode: its log lines, then the
    offer of the files of out/ (``files``), taken over exec; it exits once they are."""

    def container(pod):
        root = Path(tempfile.mkdtemp(prefix="mlc-pod-"))
        try:
            (root / "out").mkdir()
            for name, data in files.items():
                (root / "out" / name).write_bytes(data)
            pod.on_exec(lambda command: runner_exec(root, command))
            for line in lines:
                pod.log(line)
            if files:
                pod.log(OUTPUTS_MARK + json.dumps(mlc_runner.out_offer(str(root / "out"))))
                deadline = time.monotonic() + 60
                while not (root / "collected").exists() and not pod.cancelled:
                    assert time.monotonic() < deadline, "the outputs were never collected"
                    time.sleep(0.01)
            return code
        finally:
            shutil.rmtree(root, ignore_errors=True)

    return container


def assert_env_by_reference(job: dict, name: str, value: str) -> dict:
    """The Job gives the cell ``name`` from the run's Secret, and holds its value nowhere."""
    env = job["spec"]["template"]["spec"]["containers"][0]["env"]
    ref = {"secretKeyRef": {"name": job["metadata"]["name"], "key": f"env.{name}"}}
    assert {"name": name, "valueFrom": ref} in env
    assert value not in json.dumps(job)
    return job


def display_line(bundle):
    return MARK + json.dumps({"data": bundle})


def json_outputs(**values) -> dict[str, bytes]:
    """The out/ files the runner writes for --out values sent as JSON."""
    manifest = {k: {"file": f"{k}.json", "format": "json"} for k in values}
    return {
        "outputs.json": json.dumps(manifest).encode(),
        **{f"{k}.json": json.dumps(v).encode() for k, v in values.items()},
    }


def failure_of(spec, result):
    outcome = runs.RunOutcome("run-1", spec, result=result)
    return runs.failure(outcome)


def deletes(fake, resource):
    return [r for r in fake.requests if r["method"] == "DELETE" and f"/{resource}/" in r["path"]]


def interrupt_main_thread_when(predicate, delay=0.2, timeout=10.0):
    """Ctrl-C as a kernel gets it: SIGINT to the main thread once ``predicate()`` holds."""

    def watch():
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                time.sleep(delay)
                signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
                return
            time.sleep(0.01)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


# -- a run, start to finish --------------------------------------------------------------------


def test_a_run_creates_secret_and_job_streams_and_leaves_the_job_for_its_ttl(
    backend, k8s_fake, workdirs
):
    seen = {}

    def container(pod):  # the fake's pod, as the kubelet starts it
        seen["env"] = pod.env
        seen["files"] = pod.files
        seen["secret"] = k8s_fake.wait_for(
            lambda: (lambda s: s if s and s["metadata"].get("ownerReferences") else None)(
                k8s_fake.get("secrets", "mlc-run-1", NS)
            )
        )
        pod.log("hello from the pod")
        return 0

    k8s_fake.script("mlc-", run=container)
    spec = make_spec("print('hello from the pod')\n", env=(("MODE", "test"), ("API_TOKEN", "s3")))
    result, rec, _ = run(backend, workdirs, spec)

    assert result.reason == "done" and result.exit_code == 0
    assert result.stdout == "hello from the pod\n" and result.stderr == ""
    assert result.container_id.startswith("mlc-run-1-")
    # The pod got the run's folder from the Secret, and the one-stream mode.
    assert seen["files"]["/mlc/cell.py"] == spec.code.encode()
    assert seen["files"]["/mlc/runner.py"] == runner_source()
    assert json.loads(seen["files"]["/mlc/manifest.json"])["outputs"] == []
    assert seen["env"]["MLC_ONE_STREAM"] == "1" and seen["env"]["MODE"] == "test"
    assert seen["env"]["API_TOKEN"] == "s3"  # by reference to the Secret, never in the Job
    job = assert_env_by_reference(k8s_fake.get("jobs", "mlc-run-1", NS), "API_TOKEN", "s3")
    # The Secret belonged to the Job while it ran, and went when the run ended.
    owner = seen["secret"]["metadata"]["ownerReferences"][0]
    assert owner["kind"] == "Job" and owner["uid"] == job["metadata"]["uid"]
    assert k8s_fake.get("secrets", "mlc-run-1", NS) is None
    assert job["spec"]["ttlSecondsAfterFinished"] == 3600  # kubectl logs still works a while
    assert rec.phases == ["starting", "scheduling", "running"] or rec.phases == [
        "starting",
        "scheduling",
        "pulling",
        "running",
    ]


def test_events_follow_the_pod_from_scheduling_to_pulling_to_running(backend, k8s_fake, workdirs):
    k8s_fake.script("mlc-", pending_seconds=0.5, logs=["ok"])
    result, rec, _ = run(backend, workdirs)
    assert result.reason == "done"
    assert rec.phases == ["starting", "scheduling", "pulling", "running"]
    pulling = dict(rec.events)["pulling"]
    assert pulling["image"] == IMAGE and pulling["node"] == "fake-node-1"
    assert dict(rec.events)["running"]["container"] == result.container_id


def test_prints_arrive_in_order_while_the_pod_still_runs(backend, k8s_fake, workdirs):
    rec = Recorder()
    arrived_while_running = threading.Event()

    def container(pod):
        pod.log("one")
        # The next lines only once "one" reached the cell: a log read at the end would hang.
        with rec.seen:
            if rec.seen.wait_for(lambda: "one\n" in rec.text(), timeout=10):
                arrived_while_running.set()
        for line in ("two", "three"):
            time.sleep(0.05)
            pod.log(line)
        return 0

    k8s_fake.script("mlc-", run=container)
    result, rec, _ = run(backend, workdirs, rec=rec)
    assert arrived_while_running.is_set()
    assert [t for s, t in rec.output] == ["one\n", "two\n", "three\n"]
    assert result.stdout == "one\ntwo\nthree\n" and result.reason == "done"


def test_stderr_display_and_out_files_come_apart_as_from_docker(backend, k8s_fake, workdirs):
    logs = [
        "text before",
        stderr_line("a warning\n"),
        display_line({"text/html": "<b>7</b>", "text/plain": "7"}),
        "text after",
    ]
    k8s_fake.script("mlc-", run=runner_pod(logs, **json_outputs(x=[1, 2, {"a": None}])))
    spec = make_spec(outputs=("x",))
    result, rec, workdir = run(backend, workdirs, spec)
    assert result.reason == "done"
    assert rec.output[:2] == [("stdout", "text before\n"), ("stderr", "a warning\n")]
    assert result.stderr.startswith("a warning\n")
    # Display data goes on as a marked line, which the magics' own demux turns into a display.
    shown, texts = [], []
    demux = StdoutDemux(texts.append, shown.append)
    demux.feed(rec.text())
    demux.close()
    assert shown == [{"text/html": "<b>7</b>", "text/plain": "7"}]
    assert "".join(texts) == "text before\ntext after\n"
    # The --out value is where runs.py reads it, as with Docker.
    values, records = transfer.read_outputs(workdir / "out", ["x"])
    assert values == {"x": [1, 2, {"a": None}]} and records["x"]["format"] == "json"


def test_runs_execute_brings_an_out_value_back(backend, k8s_fake, monkeypatch):
    """The chain runs.py drives, with the environment stubbed: the pod reads its manifest."""

    def container(pod):
        manifest = json.loads(pod.files["/mlc/manifest.json"])
        outputs = json_outputs(**{name: {"answer": 42} for name in manifest["outputs"]})
        return runner_pod(["computing"], **outputs)(pod)

    k8s_fake.script("mlc-", run=container)
    monkeypatch.setattr(backend, "ensure_environment", lambda *a, **k: ENV)
    rec = Recorder()
    outcome = runs.execute(
        make_spec("result = {'answer': 42}\n", outputs=("result",)),
        backend,
        events=rec.event,
        output=rec.out,
    )
    assert outcome.ok and outcome.values == {"result": {"answer": 42}}
    assert rec.text() == "computing\n" and "collecting" in rec.phases
    assert runs.outcome_error(outcome) is None


def test_network_none_adds_a_network_policy_for_the_run_only(backend, k8s_fake, workdirs):
    seen = {}

    def container(pod):  # the policy exists before the pod; it then belongs to the Job
        seen["policy"] = k8s_fake.wait_for(
            lambda: (lambda p: p if p and p["metadata"].get("ownerReferences") else None)(
                k8s_fake.get("networkpolicies", "mlc-run-1", NS)
            )
        )
        return 0

    k8s_fake.script("mlc-", run=container)
    result, _, _ = run(backend, workdirs, make_spec(network="none"))
    assert result.reason == "done"
    policy = seen["policy"]
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    assert policy["metadata"]["ownerReferences"][0]["kind"] == "Job"
    assert k8s_fake.get("networkpolicies", "mlc-run-1", NS) is None


# -- failures, in plain words ------------------------------------------------------------------


def test_an_image_that_cannot_be_pulled_fails_at_once_and_the_job_goes(backend, k8s_fake, workdirs):
    k8s_fake.script("mlc-", scenario="image_pull")
    spec = make_spec()
    result, rec, _ = run(backend, workdirs, spec)
    assert result.reason == "failed" and result.exit_code is None
    assert f"cannot pull the image {IMAGE}" in result.message
    assert "failed to resolve reference" in result.message  # the kubelet's own words
    assert "image_pull_secret" in result.message
    assert "pulling" in rec.phases and "running" not in rec.phases
    error = failure_of(spec, result)
    assert "cannot pull the image" in str(error) and error.reason == "failed"
    # Pulling would go on forever: the Job, its pod and the Secret are gone.
    assert k8s_fake.get("jobs", "mlc-run-1", NS) is None
    assert k8s_fake.list("pods", NS) == [] and k8s_fake.list("secrets", NS) == []


def test_out_of_memory(backend, k8s_fake, workdirs):
    k8s_fake.script("mlc-", scenario="oom", logs=["allocating"])
    spec = make_spec(memory=64 * 2**20)
    result, _, _ = run(backend, workdirs, spec)
    assert result.reason == "oom" and result.exit_code == 137
    assert str(failure_of(spec, result)) == (
        "Out of memory: the cell used more than its --memory limit of 64 MiB."
    )


def test_unschedulable_says_why(k8s_fake, workdirs):
    backend = backend_for(k8s_fake, schedule_timeout=0)
    k8s_fake.script("mlc-", scenario="unschedulable")
    spec = make_spec(gpus="1")
    result, rec, _ = run(backend, workdirs, spec)
    assert result.reason == "failed"
    assert (
        "cannot schedule the pod: 0/3 nodes are available: 3 Insufficient nvidia.com/gpu"
        in result.message
    )
    assert "--gpus" in result.message and "node_selector" in result.message
    assert "0/3 nodes are available" in str(failure_of(spec, result))
    assert k8s_fake.get("jobs", "mlc-run-1", NS) is None  # no pod left pending


def test_unschedulable_waits_for_a_node_up_to_schedule_timeout(k8s_fake, workdirs):
    backend = backend_for(k8s_fake, schedule_timeout=0.8)
    k8s_fake.script(
        "mlc-",
        scenario="unschedulable",
        message="0/1 nodes are available: 1 node(s) had untolerated taint.",
    )
    t0 = time.monotonic()
    result, rec, _ = run(backend, workdirs)
    assert 0.8 <= time.monotonic() - t0 < 15
    assert result.reason == "failed" and "within 0.8 s" in result.message
    assert "untolerated taint" in result.message
    # The wait was shown as it began, with the scheduler's reason.
    scheduling = [info for phase, info in rec.events if phase == "scheduling"]
    assert scheduling[-1]["message"] == "0/1 nodes are available: 1 node(s) had untolerated taint."


def test_a_job_that_makes_no_pod_fails_after_a_while(k8s_fake, workdirs, monkeypatch):
    """A ResourceQuota can keep the Job controller from making the pod at all."""
    import mlcontainer_magics.backends.kubernetes.backend as k8s_backend

    monkeypatch.setattr(k8s_backend, "NO_POD_GRACE", 0.5)
    monkeypatch.setattr(k8s_fake, "_drive_job", lambda namespace, name: None)  # no controller
    backend = backend_for(k8s_fake, schedule_timeout=0)
    result, rec, _ = run(backend, workdirs)
    assert result.reason == "failed" and "The Job made no pod within 0.5 s" in result.message
    assert "kubectl describe job -n mlc mlc-run-1" in result.message
    assert k8s_fake.list("jobs", NS) == [] and k8s_fake.list("secrets", NS) == []


def test_deadline_exceeded_is_a_timeout(backend, k8s_fake, workdirs):
    k8s_fake.time_scale = 0.3  # the Job's 2 s deadline passes in 0.6 s
    k8s_fake.script("mlc-", scenario="deadline", logs=["started"])
    spec = make_spec(timeout=2)
    result, rec, _ = run(backend, workdirs, spec)
    assert result.reason == "timeout"
    assert rec.text() == "started\n"
    assert str(failure_of(spec, result)).startswith("Stopped after 2 s (--timeout)")
    assert k8s_fake.get("jobs", "mlc-run-1", NS)["spec"]["activeDeadlineSeconds"] == 2


def test_deadline_while_waiting_for_a_node_is_a_timeout_too(backend, k8s_fake, workdirs):
    k8s_fake.time_scale = 0.3
    k8s_fake.script("mlc-", scenario="unschedulable")
    result, rec, _ = run(backend, workdirs, make_spec(timeout=1))
    assert result.reason == "timeout" and "before its pod started" in result.message
    assert "running" not in rec.phases


def test_a_failing_cell_reports_exit_code_and_traceback(backend, k8s_fake, workdirs):
    traceback = (
        'Traceback (most recent call last):\n  File "/mlc/cell.py", line 1, in <module>\n'
        "ValueError: boom\n"
    )
    k8s_fake.script("mlc-", logs=["before", stderr_line(traceback)], exit_code=1, scenario="fail")
    spec = make_spec()
    result, rec, _ = run(backend, workdirs, spec)
    assert result.reason == "failed" and result.exit_code == 1
    assert rec.text("stderr") == traceback
    error = failure_of(spec, result)
    assert error.exit_code == 1 and error.logs.endswith("ValueError: boom")


def test_the_secret_limit_fails_before_anything_is_created(backend, k8s_fake, workdirs):
    spec = make_spec()
    workdir = workdirs(spec)
    (workdir / "in").mkdir(exist_ok=True)
    (workdir / "in" / "big.bin").write_bytes(b"\0" * (1024 * 1024 + 1))
    with pytest.raises(SpecError, match="over the 1 MiB"):
        backend.run(spec, ENV, workdir, run_id="run-1")
    assert k8s_fake.requests == []


# -- interrupt and stop ------------------------------------------------------------------------


def _delete_was_background(fake):
    (request,) = deletes(fake, "jobs")
    return (
        (request["body"] or {}).get("propagationPolicy")
        or request["query"].get("propagationPolicy")
    ) == "Background"


def test_interrupt_while_streaming_deletes_job_and_secret_at_once(backend, k8s_fake, workdirs):
    rec = Recorder()
    k8s_fake.script("mlc-", scenario="hang", logs=["working"])
    interrupt_main_thread_when(lambda: "working" in rec.text())
    with pytest.raises(KeyboardInterrupt):
        run(backend, workdirs, rec=rec)
    assert k8s_fake.get("jobs", "mlc-run-1", NS) is None
    assert k8s_fake.get("secrets", "mlc-run-1", NS) is None
    assert k8s_fake.list("pods", NS) == []  # Background propagation: the pod went too
    assert _delete_was_background(k8s_fake)


def test_interrupt_while_waiting_for_a_node_deletes_everything(backend, k8s_fake, workdirs):
    k8s_fake.script("mlc-", scenario="unschedulable")

    def pending():
        pods = k8s_fake.list("pods", NS)
        return pods and pod_progress(pods[0])[0] == "unschedulable"

    interrupt_main_thread_when(pending)
    with pytest.raises(KeyboardInterrupt):
        run(backend, workdirs)
    assert k8s_fake.list("jobs", NS) == [] and k8s_fake.list("secrets", NS) == []
    assert k8s_fake.list("pods", NS) == [] and _delete_was_background(k8s_fake)


def test_stop_deletes_the_job_by_label_and_the_run_says_stopped(backend, k8s_fake, workdirs):
    rec = Recorder()
    k8s_fake.script("mlc-", scenario="hang", logs=["working"])
    stopped = []

    def stop_when_working():
        rec.wait_for_text("working")
        stopped.append(backend.stop("run-9"))

    thread = threading.Thread(target=stop_when_working, daemon=True)
    thread.start()
    result, _, _ = run(backend, workdirs, run_id="run-9", rec=rec)
    thread.join(5)
    assert stopped == [True] and result.reason == "stopped"
    assert k8s_fake.get("jobs", "mlc-run-9", NS) is None
    assert k8s_fake.get("secrets", "mlc-run-9", NS) is None
    assert backend.stop("run-9") is False and backend.is_running("run-9") is False


def test_is_running(backend, k8s_fake, workdirs):
    k8s_fake.script("mlc-", scenario="hang", logs=["working"])
    rec = Recorder()
    answers = []

    def ask_then_stop():
        rec.wait_for_text("working")
        answers.append(backend.is_running("run-1"))
        backend.stop("run-1")

    threading.Thread(target=ask_then_stop, daemon=True).start()
    run(backend, workdirs, rec=rec)
    assert answers == [True] and backend.is_running("run-1") is False


# -- the cluster's errors, translated ----------------------------------------------------------


def test_wrong_credentials(k8s_fake, tmp_path, workdirs):
    config = json.loads(k8s_fake.kubeconfig.read_text())
    config["users"][0]["user"]["token"] = "expired"
    (tmp_path / "stale").write_text(json.dumps(config))
    backend = backend_for(k8s_fake, kubeconfig=str(tmp_path / "stale"))
    with pytest.raises(
        ClusterAuthError,
        match=r"refused the credentials .*401 Unauthorized.*"
        r"KubernetesConfig.context",
    ):
        run(backend, workdirs)
    assert k8s_fake.list("secrets", NS) == [] and k8s_fake.list("jobs", NS) == []


def test_missing_namespace_says_how_to_create_it(k8s_fake, workdirs):
    backend = backend_for(k8s_fake, k8s_namespace="team-x")
    with pytest.raises(NamespaceMissing, match="kubectl create namespace team-x"):
        run(backend, workdirs)


def test_the_namespace_defaults_to_the_contexts(k8s_fake, tmp_path, workdirs):
    k8s_fake.write_kubeconfig(tmp_path / "kc-mlc", namespace="mlc")
    backend = backend_for(k8s_fake, kubeconfig=str(tmp_path / "kc-mlc"), k8s_namespace=None)
    k8s_fake.script("mlc-", logs=["in mlc"])
    result, _, _ = run(backend, workdirs)
    assert result.reason == "done" and k8s_fake.get("jobs", "mlc-run-1", "mlc") is not None


def test_no_api_server_says_check_the_context(k8s_fake, tmp_path, workdirs):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = json.loads(k8s_fake.kubeconfig.read_text())
    config["clusters"][0]["cluster"]["server"] = f"http://127.0.0.1:{port}"
    (tmp_path / "gone").write_text(json.dumps(config))
    backend = backend_for(k8s_fake, kubeconfig=str(tmp_path / "gone"))
    with pytest.raises(ClusterUnavailable, match=f"127.0.0.1:{port}.*kubeconfig context"):
        run(backend, workdirs)


def test_unknown_context_and_missing_kubeconfig(k8s_fake, tmp_path, workdirs):
    with pytest.raises(ClusterUnavailable, match="no context 'prod'.*it has: mlc-fake"):
        run(backend_for(k8s_fake, context="prod"), workdirs)
    with pytest.raises(ClusterUnavailable, match="KubernetesConfig.kubeconfig"):
        run(backend_for(k8s_fake, kubeconfig=str(tmp_path / "nowhere")), workdirs)


@pytest.mark.parametrize(
    "status, kind, words",
    [
        (403, ClusterAuthError, "RBAC Role in mlc"),
        (404, NamespaceMissing, "kubectl create namespace mlc"),
        (422, KubernetesError, "admission policy"),
        (500, KubernetesError, "kubectl get --raw /readyz"),
    ],
)
def test_api_exceptions_become_errors_that_say_what_to_do(backend, status, kind, words):
    e = ApiException(status=status, reason="Reason")
    e.body = json.dumps({"kind": "Status", "message": f"the server says {status}"})
    with pytest.raises(kind) as info:
        with backend._cluster_errors("creating the Job", NS):
            raise e
    assert words in str(info.value) and f"the server says {status}" in str(info.value)
    assert isinstance(info.value, MlcError)


# -- settings, sessions, registry --------------------------------------------------------------


def test_sessions_are_refused_before_anything_is_built_or_recorded(backend, tmp_path):
    from mlcontainer_magics.core.store import Store

    assert backend.sessions is None  # the capability is absent, not an error to catch
    store = Store(tmp_path / "store")
    with pytest.raises(
        CapabilityMissing, match="--session is not supported with --backend kubernetes"
    ):
        runs.execute(make_spec(session="warm"), backend, store=store)
    assert store.count() == 0


def test_no_registry_is_a_clear_error_before_any_build(k8s_fake):
    class NoDocker:
        def ensure_environment(self, *a, **k):
            raise AssertionError("built before checking the registry")

    backend = backend_for(k8s_fake, registry=None, docker_backend=NoDocker())
    with pytest.raises(SpecError, match=r'%config KubernetesConfig.registry = "host:port/path"'):
        backend.ensure_environment(EnvSpec("python:3.11-slim"))


def test_settings_come_from_environment_variables(monkeypatch):
    monkeypatch.setenv("MLCONTAINER_K8S_REGISTRY", "registry.example.com/team")
    monkeypatch.setenv("MLCONTAINER_K8S_NAMESPACE", "team-a")
    monkeypatch.setenv("MLCONTAINER_K8S_DEFAULT_MEMORY", "2g")
    monkeypatch.setenv("MLCONTAINER_K8S_DEFAULT_CPUS", "1.5")
    monkeypatch.setenv("MLCONTAINER_K8S_NODE_SELECTOR", "pool=gpu,zone=a")
    monkeypatch.setenv("MLCONTAINER_K8S_TOLERATIONS", '[{"key": "gpu", "operator": "Exists"}]')
    monkeypatch.setenv("MLCONTAINER_K8S_TTL_SECONDS", "600")
    monkeypatch.setenv("MLCONTAINER_K8S_REGISTRY_PASSWORD", "hunter2")
    config = KubernetesConfig()
    s = objects.settings_from(config, config.k8s_namespace)
    assert (s.namespace, s.registry, s.default_memory, s.default_cpus, s.ttl_seconds) == (
        "team-a",
        "registry.example.com/team",
        2 * 1024**3,
        1.5,
        600,
    )
    assert s.node_selector == {"pool": "gpu", "zone": "a"}
    assert s.tolerations == ({"key": "gpu", "operator": "Exists"},)
    assert "hunter2" not in KubernetesConfig.class_get_help(config)
    assert "registry.example.com/team" in KubernetesConfig.class_get_help(config)


def test_bad_settings_are_spec_errors(k8s_fake, workdirs):
    backend = backend_for(k8s_fake, node_selector={"bad key!": "x"})
    with pytest.raises(SpecError, match="node_selector"):
        run(backend, workdirs)


def test_the_factory_passes_config_on():
    from traitlets.config import Config

    from mlcontainer_magics.config import MlcontainerSettings

    parent = MlcontainerSettings(config=Config({"KubernetesConfig": {"registry": "r.example.com"}}))
    backend = make_backend("kubernetes", parent, namespace="ns1")
    assert isinstance(backend, KubernetesBackend) and backend.config.registry == "r.example.com"
    assert backend.repository == "ns1-env"


# -- export --k8s ------------------------------------------------------------------------------


def test_export_writes_a_job_yaml_that_validates(tmp_path, monkeypatch):
    import kubernetes_validate
    import yaml

    from mlcontainer_magics.core.store import Store

    monkeypatch.setenv("MLCONTAINER_K8S_NAMESPACE", "team-a")
    store = Store(tmp_path / "store")
    spec = make_spec(
        "print(x + 1)\n",
        name="add-one",
        env=(("API_KEY", "s3cret"),),
        inputs=("x",),
        network="none",
        timeout=60,
        memory=2**30,
    )
    run_id = store.new_id({"spec": spec.to_dict()})
    workdir, records = runs.prepare_workdir(spec, {"x": 41})
    try:
        store.put(runs.record_start(spec, run_id, {}))
        runs.keep_inputs(store.artifacts_dir(run_id), workdir)
    finally:
        shutil.rmtree(workdir)
    pushed = "registry.example.com/team/mlc-env@sha256:" + "d" * 64
    store.update(run_id, status="done", inputs=records, env_image=pushed, stdout="42\n", lock=[])

    dest = export(store, run_id, tmp_path / "export", backend=None, k8s=True)
    text = (dest / "job.yaml").read_text()
    docs = list(yaml.safe_load_all(text))
    assert [d["kind"] for d in docs] == ["Secret", "Job", "NetworkPolicy"]
    for doc in docs:
        for version in (objects.OLDEST_KUBERNETES, kubernetes_validate.latest_version()):
            kubernetes_validate.validate(doc, version, strict=True)
    secret, job, _ = docs
    assert job["metadata"]["namespace"] == "team-a"
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == pushed
    assert "MLC_ONE_STREAM" not in json.dumps(container)  # kubectl logs reads it plainly
    payload = {k: base64.b64decode(v) for k, v in secret["data"].items()}
    assert payload["cell.py"] == b"print(x + 1)\n"
    assert {"runner.py", "manifest.json", "env.API_KEY"} <= payload.keys()
    assert any(k.startswith("in__x.") for k in payload)
    assert payload["env.API_KEY"] == b""  # never recorded
    assert "s3cret" not in text and 'data["env.API_KEY"]' in text
    assert f"kubectl logs -n team-a -f job/{job['metadata']['name']}" in text


def test_export_of_a_local_image_says_to_push_it(tmp_path):
    spec = make_spec()
    (tmp_path / "mlc").mkdir()
    (tmp_path / "mlc" / "cell.py").write_text(spec.code)
    record = {"id": "snap-1", "env_image": "mlcontainer-env:0123"}
    path = k8s_export.write_job_manifest(record, spec, tmp_path, objects.K8sSettings())
    assert "The image mlcontainer-env:0123 is local" in path.read_text()


# -- with Docker: a real registry and the real runner ------------------------------------------


def docker_pod(client, namespace, root: Path, serve: bool = False):
    """A ``run=`` callback for the fake: the pod's container, run for real on the engine with
    the Secret's files in a folder mounted at /mlc (and those mounted elsewhere, a --mount's,
    in a folder per top-level directory), the pod's env and its user; the container's output is
    the pod's log, line by line as it comes. With ``serve`` (a Deployment's pod), its port is
    published on 127.0.0.1 (the fake's probes and Service proxy go there) and its root
    filesystem is read-only with /tmp writable, as the pod's securityContext says."""

    def container(pod):
        c = pod.pod["spec"]["containers"][0]
        folder = Path(tempfile.mkdtemp(dir=root))
        folder.chmod(0o777)  # /mlc is an emptyDir: writable
        elsewhere = Path(tempfile.mkdtemp(dir=root))
        elsewhere.chmod(0o755)
        binds = {str(folder): {"bind": "/mlc", "mode": "rw"}}
        for path, data in pod.files.items():
            if Path(path).is_relative_to("/mlc"):
                target = folder / Path(path).relative_to("/mlc")
            else:
                top = Path(path).parts[1]
                binds[str(elsewhere / top)] = {"bind": f"/{top}", "mode": "ro"}
                target = elsewhere / Path(path).relative_to("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.parent != folder:  # /mlc itself is an emptyDir: writable by all
                target.parent.chmod(0o755)
            target.write_bytes(data)
            target.chmod(0o644)
        (folder / "out").mkdir()
        (folder / "out").chmod(0o777)
        uid = c["securityContext"]["runAsUser"]
        network = {"network_mode": "none"}
        if serve:
            port = c["ports"][0]["containerPort"]
            network = {"ports": {f"{port}/tcp": ("127.0.0.1", None)}}
            network.update(read_only=True, tmpfs={"/tmp": f"uid={uid}"})
        made = client.containers.create(
            c["image"],
            c["command"],
            user=f"{uid}:{uid}",
            environment=pod.env,
            working_dir=c["workingDir"],
            labels={LABEL: namespace},
            cap_drop=["ALL"],
            security_opt=["no-new-privileges"],
            volumes=binds,
            **network,
        )

        def exec_in(command):  # pods/exec, as the kubelet does it: in the running container
            done = made.exec_run(command, user=f"{uid}:{uid}", demux=True)
            return done.output[0] or b"", done.output[1] or b"", done.exit_code

        pod.on_exec(exec_in)
        pod.on_signal(lambda name: made.kill(signal=name))  # the kubelet's SIGTERM, SIGKILL
        try:
            made.start()
            if serve:
                made.reload()
                published = made.attrs["NetworkSettings"]["Ports"][f"{port}/tcp"][0]
                pod.serve_at(int(published["HostPort"]))
            decoder, pending = codecs.getincrementaldecoder("utf-8")("replace"), ""
            for chunk in made.logs(stream=True, follow=True):
                pending += decoder.decode(chunk)
                *lines, pending = pending.split("\n")
                for line in lines:
                    pod.log(line + "\n")
            if pending:
                pod.log(pending)
            return made.wait()["StatusCode"]
        finally:
            made.remove(force=True)

    return container


def _pushed_tags(client, registry, image_ref):
    image = client.images.get(image_ref)
    return [t for t in image.tags if t.startswith(registry.host + "/")]


def _uploads(registry) -> int:
    import re

    return len(
        re.findall(
            r'msg="response completed".*http\.request\.method=(?:PUT|POST|PATCH)\b', registry.log()
        )
    )


@pytest.mark.docker
@pytest.mark.usefixtures("no_leaks")
def test_push_only_when_the_registry_lacks_the_image(
    k8s_fake, registry, docker_engine, docker_images, namespace
):
    own = f"{namespace}p"  # a repository no other test pushes to
    backend = backend_for(
        k8s_fake,
        namespace=own,
        registry=registry.host,
        registry_username=registry.username,
        registry_password=registry.password,
    )
    rec = Recorder()
    before = _uploads(registry)
    try:
        env = backend.ensure_environment(EnvSpec("python:3.11-slim"), events=rec.event)
    finally:
        docker_images.extend(_pushed_tags(docker_engine, registry, "python:3.11-slim"))
    assert env.image.startswith(f"{registry.host}/{own}-env@sha256:")
    assert env.image_id == docker_engine.images.get("python:3.11-slim").id
    assert "pushing" in rec.phases and _uploads(registry) > before
    r = registry.http().get(f"{registry.url}/v2/{own}-env/tags/list", timeout=10)
    assert r.json()["tags"] == [env.image_id.split(":")[1][:24]]

    # Another kernel (a new backend): the registry has it, nothing is sent.
    again = backend_for(
        k8s_fake,
        namespace=own,
        registry=registry.host,
        registry_username=registry.username,
        registry_password=registry.password,
    )
    rec2 = Recorder()
    before = _uploads(registry)
    assert (
        again.ensure_environment(EnvSpec("python:3.11-slim"), events=rec2.event).image == env.image
    )
    assert _uploads(registry) == before
    assert any(
        "already holds this image" in info.get("line", "")
        for phase, info in rec2.events
        if phase == "build-log"
    )


@pytest.mark.docker
@pytest.mark.usefixtures("no_leaks")
def test_magics_run_the_real_runner_as_a_pod_and_export_a_job(
    ip, k8s_fake, registry, docker_engine, docker_images, namespace, tmp_path, capsys, monkeypatch
):
    """%%containerize --backend kubernetes: image pushed to a real registry, the pod's container
    run by the real engine with the real runner; only the API server is a fake."""
    import kubernetes_validate
    import yaml

    from mlcontainer_magics.frontends import cli, magics

    k8s_fake.script("mlc-", run=docker_pod(docker_engine, namespace, tmp_path))
    for key, value in [
        ("kubeconfig", str(k8s_fake.kubeconfig)),
        ("k8s_namespace", NS),
        ("registry", registry.host),
        ("registry_username", registry.username),
        ("registry_password", registry.password),
    ]:
        ip.run_line_magic("config", f"KubernetesConfig.{key} = {value!r}")
    shown = []
    monkeypatch.setattr(magics, "_publish", shown.append)
    name = f"k8s-{uuid.uuid4().hex[:8]}"
    ip.user_ns["x"] = 41
    try:
        ip.run_cell_magic(
            "containerize",
            f"--backend kubernetes -n {name} --in x --out result",
            "import os, sys\n"
            "print('hello from', os.getuid(), os.environ['MLC_ONE_STREAM'])\n"
            "print('a warning', file=sys.stderr)\n"
            "display({'x': x})\n"
            "result = {'answer': x + 1}\n",
        )
    finally:
        docker_images.extend(_pushed_tags(docker_engine, registry, "python:3.11-slim"))
    out = capsys.readouterr()
    assert "hello from 1000 1\n" in out.out and "a warning\n" in out.err
    assert ip.user_ns["result"] == {"answer": 42}
    assert shown and shown[0]["text/plain"] == "{'x': 41}"
    store = ip.magics_manager.registry["ContainerizeMagics"].store
    record = store.get(name)
    assert record["status"] == "done" and record["env_image"].startswith(registry.host + "/")
    assert record["stdout"].startswith("hello from 1000 1\n")
    assert k8s_fake.get("secrets", f"mlc-{name}-{record['id']}", NS) is None

    # %config reaches the backend the kernel keeps, after it was made too.
    kept = ip.magics_manager.registry["ContainerizeMagics"].backend_for("kubernetes")
    ip.run_line_magic("config", "KubernetesConfig.schedule_timeout = 7.0")
    assert kept.config.schedule_timeout == 7.0 and kept.config.registry == registry.host

    # The same backend refuses a warm session.
    with pytest.raises(SpecError, match="--session"):
        ip.run_cell_magic("containerize", "--backend kubernetes --session warm", "pass")

    # The snapshot says where it ran; `mlcontainer rerun` goes there again (not to Docker).
    monkeypatch.setenv("MLCONTAINER_STORE", str(store.root))
    for key, value in [
        ("REGISTRY", registry.host),
        ("REGISTRY_USERNAME", registry.username),
        ("REGISTRY_PASSWORD", registry.password),
    ]:
        monkeypatch.setenv(f"MLCONTAINER_K8S_{key}", value)
    monkeypatch.setenv("KUBECONFIG", str(k8s_fake.kubeconfig))
    capsys.readouterr()
    assert cli.main(["show", record["id"], "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["backend"] == "kubernetes"
    assert shown["target"] == {"context": "mlc-fake", "namespace": NS}
    jobs_before = {j["metadata"]["name"] for j in k8s_fake.list("jobs", NS)}
    assert cli.main(["rerun", record["id"]]) == 0
    out = capsys.readouterr().out
    assert "hello from 1000 1\n" in out and " on kubernetes: done" in out
    rerun = store.list(limit=1)[0]
    assert rerun["id"] != record["id"]
    assert store.get(rerun["id"])["backend"] == "kubernetes"
    new_jobs = {j["metadata"]["name"] for j in k8s_fake.list("jobs", NS)} - jobs_before
    assert [name for name in new_jobs if rerun["id"] in name], new_jobs

    # mlcontainer export ID DIR --k8s
    assert cli.main(["export", record["id"], str(tmp_path / "export"), "--k8s"]) == 0
    docs = list(yaml.safe_load_all((tmp_path / "export" / "job.yaml").read_text()))
    assert [d["kind"] for d in docs] == ["Secret", "Job"]
    for doc in docs:
        for version in (objects.OLDEST_KUBERNETES, kubernetes_validate.latest_version()):
            kubernetes_validate.validate(doc, version, strict=True)
    assert docs[1]["spec"]["template"]["spec"]["containers"][0]["image"] == record["env_image"]


# -- the REST API reruns a Kubernetes snapshot on Kubernetes -----------------------------------


@pytest.fixture
def jp_server_config(tmp_path):
    from mlcontainer_magics.core.store import Store

    return {
        "ServerApp": {
            "jpserver_extensions": {"mlcontainer_magics": True},
            "tornado_settings": {"mlcontainer_store": Store(tmp_path / "store")},
        }
    }


@pytest.mark.docker
@pytest.mark.usefixtures("no_leaks")
async def test_rest_rerun_of_a_kubernetes_snapshot_runs_on_kubernetes(
    jp_fetch,
    jp_serverapp,
    k8s_fake,
    registry,
    docker_engine,
    docker_images,
    namespace,
    tmp_path,
    monkeypatch,
):
    from mlcontainer_magics.backends import Backends

    k8s_fake.script("mlc-", run=docker_pod(docker_engine, namespace, tmp_path))
    monkeypatch.setenv("KUBECONFIG", str(k8s_fake.kubeconfig))
    for key, value in [
        ("REGISTRY", registry.host),
        ("REGISTRY_USERNAME", registry.username),
        ("REGISTRY_PASSWORD", registry.password),
        ("NAMESPACE", NS),
    ]:
        monkeypatch.setenv(f"MLCONTAINER_K8S_{key}", value)
    settings = jp_serverapp.web_app.settings
    store = settings["mlcontainer_store"]
    backend = Backends(settings["mlcontainer_settings"]).get("kubernetes", namespace=namespace)
    try:
        outcome = runs.execute(make_spec("print('from a pod')\n"), backend, store=store)
    finally:
        docker_images.extend(_pushed_tags(docker_engine, registry, "python:3.11-slim"))
    assert outcome.ok
    record = json.loads((await jp_fetch("mlcontainer", "snapshots", outcome.run_id)).body)
    assert record["backend"] == "kubernetes" and record["target"]["namespace"] == NS

    jobs_before = {j["metadata"]["name"] for j in k8s_fake.list("jobs", NS)}
    data = json.loads(
        (
            await jp_fetch(
                "mlcontainer", "snapshots", outcome.run_id, "rerun", method="POST", body="{}"
            )
        ).body
    )
    assert data["backend"] == "kubernetes" and data["status"] == "done", data
    assert data["rerun_of"] == outcome.run_id
    rerun = store.get(data["id"])
    assert rerun["backend"] == "kubernetes" and rerun["stdout"] == "from a pod\n"
    new_jobs = {j["metadata"]["name"] for j in k8s_fake.list("jobs", NS)} - jobs_before
    assert [name for name in new_jobs if data["id"] in name], new_jobs
    # --backend overrides: a wrong name is a 400 that says which ones exist.
    with pytest.raises(HTTPClientError) as info:
        await jp_fetch(
            "mlcontainer",
            "snapshots",
            outcome.run_id,
            "rerun",
            method="POST",
            body=json.dumps({"backend": "nomad"}),
        )
    assert info.value.code == 400 and b"docker, kubernetes" in info.value.response.body


@pytest.mark.docker
@pytest.mark.usefixtures("no_leaks")
def test_a_small_read_only_mount_travels_with_the_job(
    k8s_fake, registry, docker_engine, docker_images, namespace, tmp_path
):
    from mlcontainer_magics.core.spec import parse_mounts
    from mlcontainer_magics.core.store import Store

    k8s_fake.script("mlc-", run=docker_pod(docker_engine, namespace, tmp_path))
    (tmp_path / "nb" / "data").mkdir(parents=True)
    (tmp_path / "nb" / "data" / "labels.csv").write_text("cat,dog\n")
    backend = backend_for(
        k8s_fake,
        namespace=namespace,
        registry=registry.host,
        registry_username=registry.username,
        registry_password=registry.password,
    )
    spec = make_spec(
        "print(open('data/labels.csv').read().strip())\n",
        mounts=parse_mounts(["data"], tmp_path / "nb"),
    )
    store = Store(tmp_path / "store")
    try:
        outcome = runs.execute(spec, backend, store=store)
    finally:
        docker_images.extend(_pushed_tags(docker_engine, registry, "python:3.11-slim"))
    assert outcome.ok and outcome.result.stdout == "cat,dog\n"
    record = store.get(outcome.run_id)
    assert record["backend"] == "kubernetes" and record["mounts"][0]["count"] == 1


def test_a_secret_is_a_key_of_the_runs_secret_and_never_in_the_job(backend, k8s_fake, workdirs):
    seen = {}

    def container(pod):
        seen["env"] = pod.env
        pod.log("token is " + pod.env["HF_TOKEN"])
        return 0

    k8s_fake.script("mlc-", run=container)
    spec = make_spec("pass\n", secrets=("HF_TOKEN",))
    rec = Recorder()
    result = backend.run(
        spec,
        ENV,
        workdirs(spec),
        run_id="run-1",
        events=rec.event,
        output=rec.out,
        secrets={"HF_TOKEN": "hf_s3cret"},
    )
    assert result.reason == "done" and seen["env"]["HF_TOKEN"] == "hf_s3cret"
    assert_env_by_reference(k8s_fake.get("jobs", "mlc-run-1", NS), "HF_TOKEN", "hf_s3cret")
    assert k8s_fake.get("secrets", "mlc-run-1", NS) is None  # gone with the run
