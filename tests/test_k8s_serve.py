"""Serving a cell on Kubernetes and as an export: the Deployment and Service objects (validated
against the official schemas), `mlcontainer export --serve [--k8s]`, and deploy / rollout /
remove against the API fake, whose Deployment controller runs pods scripted (a stub server, a
crash loop, an image it cannot pull, no node) or (``-m docker``) on the real engine with the
real runner, called through the API server's service proxy.
"""

from __future__ import annotations

import base64
import contextlib
import json
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from mlcontainer_magics.backends.export import defines, export
from mlcontainer_magics.backends.kubernetes import objects, serving
from mlcontainer_magics.backends.kubernetes.services import RolloutFailed
from mlcontainer_magics.core import runs
from mlcontainer_magics.core.backend import Environment
from mlcontainer_magics.core.spec import EnvSpec, RunSpec
from mlcontainer_magics.errors import NotFound, SpecError

kubernetes = pytest.importorskip("kubernetes")
kubernetes_validate = pytest.importorskip("kubernetes_validate")

pytest_plugins = ["k8s_fake", "registry_fixture"]

NS = "mlc"
IMAGE = "127.0.0.1:5000/mlctest-env@sha256:" + "a" * 64
ENV = Environment(IMAGE, "sha256:" + "b" * 64, "sha256:" + "c" * 64)
NEWEST = kubernetes_validate.utils.major_minor(kubernetes_validate.latest_version())
VERSIONS = [objects.OLDEST_KUBERNETES, NEWEST]
CELL = "def predict(x):\n    return {'doubled': [2 * v for v in x]}\n"
FILES = {"runner.py": b"# runner", "cell.py": CELL.encode(), "manifest.json": b"{}"}


def make_spec(code=CELL, **kw):
    return RunSpec(code=code, env_spec=EnvSpec("python:3.11-slim"), **kw)


def backend_for(fake, **settings):
    from traitlets.config import Config, Configurable

    from mlcontainer_magics.backends.kubernetes.backend import KubernetesBackend

    values = {
        "kubeconfig": str(fake.kubeconfig),
        "k8s_namespace": NS,
        "schedule_timeout": 60.0,
        **settings,
    }
    parent = Configurable(config=Config({"KubernetesConfig": values}))
    return KubernetesBackend(namespace="mlctest", parent=parent)


def manifests(**kw):
    return serving.service_manifests(
        make_spec(**kw.pop("spec", {})),
        image=IMAGE,
        snapshot_id=kw.pop("snapshot_id", "abc123"),
        namespace=NS,
        settings=kw.pop("settings", objects.K8sSettings(namespace=NS)),
        service=kw.pop("service", "ocr"),
        files=FILES,
        **kw,
    )


# -- the objects, pure -------------------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
def test_secret_deployment_and_service_validate_strictly(version):
    settings = objects.K8sSettings(
        namespace=NS,
        image_pull_secret="pull",
        node_selector={"pool": "cpu"},
        tolerations=({"key": "spot", "operator": "Exists"},),
    )
    spec = {"cpus": 0.5, "memory": 2**30, "env": (("API_TOKEN", "s3cret"),)}
    for obj in manifests(spec=spec, settings=settings, replicas=3):
        kubernetes_validate.validate(obj, version, strict=True)


def test_deployment_serves_with_probes_and_a_restricted_read_only_container():
    secret, deployment, service = manifests(spec={"cpus": 2, "memory": 512 * 2**20}, replicas=3)
    assert [o["kind"] for o in (secret, deployment, service)] == ["Secret", "Deployment", "Service"]
    spec = deployment["spec"]
    assert spec["replicas"] == 3
    assert spec["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Always" and pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    [container] = pod["containers"]
    assert container["command"] == ["python", "/mlc/runner.py", "--http", "8080"]
    assert container["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert (
        container["startupProbe"]["periodSeconds"] * container["startupProbe"]["failureThreshold"]
        == serving.STARTUP_SECONDS
    )
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert container["resources"] == {
        "requests": {"cpu": "2", "memory": "512Mi"},
        "limits": {"cpu": "2", "memory": "512Mi"},
    }
    # What the runner writes is an emptyDir: /mlc (its folder), /mlc/out, /tmp (HOME).
    writable = {m["mountPath"] for m in container["volumeMounts"] if not m.get("readOnly")}
    assert writable == {"/mlc", "/mlc/out", "/tmp"}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert all(
        "emptyDir" in volumes[m["name"]]
        for m in container["volumeMounts"]
        if m["mountPath"] in writable
    )
    assert volumes["payload"]["secret"]["secretName"] == secret["metadata"]["name"]
    # The Service: ClusterIP, 80 -> the pods' named port.
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["ports"] == [
        {"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}
    ]


def test_labels_follow_the_jobs_and_the_selector_outlives_snapshots():
    _, first, service = manifests(snapshot_id="snap-1")
    _, second, _ = manifests(snapshot_id="snap-2")
    labels = first["spec"]["template"]["metadata"]["labels"]
    assert labels[objects.LABEL_MANAGED_BY] == objects.MANAGED_BY
    assert labels[objects.LABEL_SNAPSHOT] == "snap-1" and labels[objects.LABEL_NAME] == "ocr"
    assert (
        first["spec"]["template"]["metadata"]["annotations"][objects.ANNOTATION_SNAPSHOT]
        == "snap-1"
    )
    # A new snapshot changes the pods' template (a rollout), never the selector (immutable).
    assert first["spec"]["selector"] == second["spec"]["selector"]
    assert service["spec"]["selector"] == first["spec"]["selector"]["matchLabels"]
    assert first["spec"]["template"] != second["spec"]["template"]
    assert first["metadata"]["name"] == service["metadata"]["name"] == "mlc-ocr"


def test_names_are_dns_1035_and_the_proxy_path_uses_them():
    name = serving.deployment_name("My OCR_model")
    assert name[0].isalpha() and len(name) <= 63
    assert serving.proxy_path("team", "ocr") == "/api/v1/namespaces/team/services/mlc-ocr:80/proxy/"


def test_a_secret_value_is_a_reference_never_in_the_deployment():
    secret, deployment, _ = manifests(
        spec={"env": (("API_TOKEN", "s3cret"),), "secret_env": frozenset({"API_TOKEN"})}
    )
    assert "s3cret" not in json.dumps(deployment)
    assert base64.b64decode(secret["data"]["env.API_TOKEN"]) == b"s3cret"


@pytest.mark.parametrize("replicas", [0, -1, 1.5, True])
def test_bad_replicas_are_refused(replicas):
    with pytest.raises(SpecError, match="--replicas"):
        manifests(replicas=replicas)


def test_rollout_is_judged_as_kubectl_does():
    _, deployment, _ = manifests(replicas=2)
    deployment["metadata"]["generation"] = 2
    deployment["status"] = {"observedGeneration": 1}
    assert serving.rollout_progress(deployment, []).state == "waiting"
    deployment["status"] = {"observedGeneration": 2, "updatedReplicas": 1, "replicas": 2}
    assert "1 of 2 new replicas" in serving.rollout_progress(deployment, []).message
    deployment["status"].update(updatedReplicas=2, replicas=3)
    assert "old replicas are pending" in serving.rollout_progress(deployment, []).message
    deployment["status"].update(replicas=2, availableReplicas=1)
    assert "1 of 2 updated replicas" in serving.rollout_progress(deployment, []).message
    deployment["status"].update(availableReplicas=2)
    assert serving.rollout_progress(deployment, []).state == "done"
    deployment["status"]["conditions"] = [
        {
            "type": "Progressing",
            "status": "False",
            "reason": "ProgressDeadlineExceeded",
            "message": 'ReplicaSet "mlc-ocr-x" has timed out progressing.',
        }
    ]
    failed = serving.rollout_progress(deployment, [])
    assert (failed.state, failed.kind) == ("failed", "deadline")


def test_defines_finds_top_level_bindings_only():
    assert defines("def predict(x): return x", "predict")
    assert defines("from model import predict", "predict")
    assert defines("predict = lambda x: x", "predict")
    assert defines("try:\n    def predict(x): pass\nexcept Exception: pass", "predict")
    assert not defines("def other():\n    def predict(x): pass", "predict")
    assert not defines("x = 1", "predict")
    assert defines("def predict(:", "predict")  # it does not parse: the run will say


# -- export --serve --k8s (no engine: a snapshot without a lock) --------------------------------


def recorded(tmp_path, code=CELL, **extra):
    from mlcontainer_magics.core.store import Store

    store = Store(tmp_path / "store")
    spec = make_spec(code, name="doubler", inputs=("x",), memory=2**28)
    run_id = store.new_id({"spec": spec.to_dict()})
    workdir, records = runs.prepare_workdir(spec, {"x": 41})
    try:
        store.put(runs.record_start(spec, run_id, {}))
        runs.keep_inputs(store.artifacts_dir(run_id), workdir)
    finally:
        shutil.rmtree(workdir)
    pushed = "registry.example.com/team/mlc-env@sha256:" + "d" * 64
    store.update(run_id, status="done", inputs=records, env_image=pushed, lock=[], **extra)
    return store, run_id, pushed


def test_export_serve_k8s_writes_a_service_yaml_that_validates(tmp_path, monkeypatch):
    import yaml

    monkeypatch.setenv("MLCONTAINER_K8S_NAMESPACE", "team-a")
    store, run_id, pushed = recorded(tmp_path)
    dest = export(store, run_id, tmp_path / "export", None, k8s=True, serve=True, replicas=2)
    assert not (dest / "job.yaml").exists()
    text = (dest / "service.yaml").read_text()
    docs = list(yaml.safe_load_all(text))
    assert [d["kind"] for d in docs] == ["Secret", "Deployment", "Service"]
    for doc in docs:
        for version in VERSIONS:
            kubernetes_validate.validate(doc, version, strict=True)
    secret, deployment, _ = docs
    assert deployment["metadata"]["namespace"] == "team-a"
    assert deployment["spec"]["replicas"] == 2
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == pushed
    assert container["resources"]["limits"]["memory"] == "256Mi"
    payload = {k: base64.b64decode(v) for k, v in secret["data"].items()}
    serve = json.loads(payload["manifest.json"])["serve"]
    assert serve["name"] == "doubler" and serve["entry"] == "predict"
    assert serve["snapshot"] == run_id and serve["lock_digest"].startswith("sha256:")
    assert "kubectl apply -f service.yaml" in text
    assert "kubectl rollout status -n team-a deployment/mlc-doubler" in text
    # The folder builds the serving image: the Dockerfile and the README say so.
    dockerfile = (dest / "Dockerfile").read_text()
    assert 'CMD ["python", "/mlc/runner.py", "--http", "8080"]' in dockerfile
    assert "EXPOSE 8080" in dockerfile and "HEALTHCHECK" in dockerfile
    assert "curl" not in dockerfile and "USER 1000:1000" in dockerfile
    readme = (dest / "README.md").read_text()
    assert "docker run --rm -p 127.0.0.1:8080:8080" in readme and "/predict" in readme
    assert json.loads((dest / "mlc" / "manifest.json").read_text())["serve"] == serve


def test_export_serve_of_a_cell_without_the_function_says_choose_entry(tmp_path):
    store, run_id, _ = recorded(tmp_path, code="x = 1\n")
    with pytest.raises(SpecError, match=r"defines no function predict\(\.\.\.\).*--entry"):
        export(store, run_id, tmp_path / "export", None, serve=True)
    assert not (tmp_path / "export").exists()
    dest = export(store, run_id, tmp_path / "export", None, serve=True, entry="x")
    assert json.loads((dest / "mlc" / "manifest.json").read_text())["serve"]["entry"] == "x"


def test_export_of_a_service_keeps_its_name_and_entry(tmp_path):
    code = "def classify(x):\n    return x\n"
    service = {"name": "ocr", "entry": "classify", "replicas": 3}
    store, run_id, _ = recorded(tmp_path, code=code, service=service)
    dest = export(store, run_id, tmp_path / "export", None, serve=True, k8s=True)
    serve = json.loads((dest / "mlc" / "manifest.json").read_text())["serve"]
    assert (serve["name"], serve["entry"]) == ("ocr", "classify")
    assert "replicas: 3" in (dest / "service.yaml").read_text()


def test_export_serve_options_only_with_serve(tmp_path, monkeypatch, capsys):
    from mlcontainer_magics.frontends import cli

    store, run_id, _ = recorded(tmp_path)
    monkeypatch.setenv("MLCONTAINER_STORE", str(store.root))
    assert cli.main(["export", run_id, str(tmp_path / "a"), "--entry", "predict"]) != 0
    assert "--entry: only with --serve; add --serve." in capsys.readouterr().err
    assert cli.main(["export", run_id, str(tmp_path / "b"), "--serve", "--replicas", "0"]) != 0
    assert "--replicas '0': use a number from 1" in capsys.readouterr().err
    assert cli.main(["export", run_id, str(tmp_path / "c"), "--serve", "--name", "dbl"]) == 0
    assert "docker run --rm -p 127.0.0.1:8080:8080" in capsys.readouterr().out
    assert "# Service dbl: snapshot" in (tmp_path / "c" / "README.md").read_text()


def test_deploy_without_a_registry_says_how_to_set_one_and_makes_nothing(
    k8s_fake, tmp_path, monkeypatch, capsys
):
    from mlcontainer_magics.frontends import cli

    store, run_id, _ = recorded(tmp_path)
    monkeypatch.setenv("MLCONTAINER_STORE", str(store.root))
    monkeypatch.setenv("KUBECONFIG", str(k8s_fake.kubeconfig))
    monkeypatch.delenv("MLCONTAINER_K8S_REGISTRY", raising=False)
    assert cli.main(["deploy", run_id]) != 0
    assert "KubernetesConfig.registry" in capsys.readouterr().err
    assert not [r for r in k8s_fake.requests if r["method"] != "GET"]


def test_deploy_of_a_snapshot_without_network_is_refused_before_anything(
    k8s_fake, tmp_path, monkeypatch, capsys
):
    from mlcontainer_magics.frontends import cli

    store, run_id, _ = recorded(tmp_path)
    store.update(run_id, spec=dict(store.get(run_id)["spec"], network="none"))
    monkeypatch.setenv("MLCONTAINER_STORE", str(store.root))
    monkeypatch.setenv("KUBECONFIG", str(k8s_fake.kubeconfig))
    monkeypatch.setenv("MLCONTAINER_K8S_REGISTRY", "127.0.0.1:1/never-used")
    assert cli.main(["deploy", run_id]) != 0
    err = capsys.readouterr().err
    assert "--network none is not supported with --backend kubernetes" in err
    assert "nothing was built" in err
    assert not [r for r in k8s_fake.requests if r["method"] != "GET"]


# -- deploy against the fake ----------------------------------------------------------------


def stub_server(answers=None):
    """A ``run=`` callback: the container serves /healthz and POST /predict (the JSON body,
    doubled) on a port of this machine, until the kubelet stops it."""

    def container(pod):
        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                self._answer(200, {"status": "ok"} if self.path == "/healthz" else {"p": self.path})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                self._answer(200, [2 * v for v in body])

            def _answer(self, code, obj):
                data = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            return serve_until_stopped(pod, server.server_address[1], 143)
        finally:
            server.shutdown()
            server.server_close()

    return container


def serve_until_stopped(pod, port: int, code: int) -> int:
    """The pod's container answers at ``port`` of this machine until the kubelet stops it;
    then it exits with ``code``."""
    pod.serve_at(port)
    pod.log("serving")
    while not pod.cancelled:
        time.sleep(0.01)
    return code


def post_json(backend, service: str, body: bytes):
    """POST ``body`` (JSON) to the service's /predict through the API server's proxy."""
    return backend.call_service(
        service, "predict", method="POST", body=body, headers={"Content-Type": "application/json"}
    )


def deploy(backend, run_id="snap-1", service="ocr", replicas=1, **kw):
    return backend.deploy_service(
        make_spec(), ENV, FILES, run_id=run_id, service=service, replicas=replicas, **kw
    )


def test_deploy_creates_waits_serves_through_the_proxy_and_removes(k8s_fake):
    k8s_fake.script("mlc-ocr", run=stub_server())
    backend = backend_for(k8s_fake)
    phases = []
    deployed = deploy(backend, replicas=2, events=lambda phase, **info: phases.append(phase))
    assert deployed.url == k8s_fake.url + "/api/v1/namespaces/mlc/services/mlc-ocr:80/proxy"
    deployment = k8s_fake.get("deployments", "mlc-ocr", NS)
    status = deployment["status"]
    assert status["availableReplicas"] == status["updatedReplicas"] == 2
    assert status["observedGeneration"] == deployment["metadata"]["generation"]
    assert k8s_fake.get("services", "mlc-ocr", NS)["spec"]["clusterIP"]
    assert k8s_fake.get("secrets", "mlc-ocr-snap-1", NS) is not None
    assert phases[0] == "starting" and phases[-1] == "running"
    # Through the API server's service proxy, with the kubeconfig's credentials.
    status_code, headers, body = post_json(backend, "ocr", b"[1, 2]")
    assert (status_code, json.loads(body)) == (200, [2, 4])
    assert backend.call_service("ocr", "healthz")[0] == 200
    unauthenticated = urllib.request.Request(deployed.url + "/healthz")
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(unauthenticated)
    assert e.value.code == 401
    assert [s["name"] for s in backend.deployed_services()] == ["ocr"]

    assert backend.remove_service("ocr") is True
    k8s_fake.wait_for(lambda: not k8s_fake.list("pods", NS))
    for resource in ("deployments", "replicasets", "services", "secrets"):
        assert k8s_fake.list(resource, NS) == [], resource
    assert backend.remove_service("ocr") is False
    with pytest.raises(NotFound, match="mlcontainer deploy"):
        backend.rollout_status("ocr")


def test_redeploy_patches_replicas_and_a_new_snapshot_rolls_out_without_a_gap(k8s_fake):
    k8s_fake.script("mlc-ocr", run=stub_server())
    backend = backend_for(k8s_fake)
    deploy(backend, replicas=1)
    first = k8s_fake.get("deployments", "mlc-ocr", NS)
    deploy(backend, replicas=3)  # the same snapshot: scaled in place
    scaled = k8s_fake.get("deployments", "mlc-ocr", NS)
    assert scaled["metadata"]["uid"] == first["metadata"]["uid"]
    assert scaled["spec"]["replicas"] == 3 and scaled["status"]["availableReplicas"] == 3
    assert len(k8s_fake.list("replicasets", NS)) == 1
    patches = [
        r
        for r in k8s_fake.requests
        if r["method"] == "PATCH" and r["path"].endswith("/deployments/mlc-ocr")
    ]
    assert patches and patches[-1]["content_type"] == "application/merge-patch+json"

    # A new snapshot: a new ReplicaSet; the proxy answers all along.
    failures = []
    stop = threading.Event()

    def keep_calling():
        while not stop.is_set():
            if backend.call_service("ocr", "healthz")[0] != 200:
                failures.append(time.monotonic())
            time.sleep(0.01)

    caller = threading.Thread(target=keep_calling)
    caller.start()
    try:
        deploy(backend, run_id="snap-2", replicas=3)
    finally:
        stop.set()
        caller.join()
    assert not failures
    rolled = k8s_fake.get("deployments", "mlc-ocr", NS)
    assert rolled["metadata"]["generation"] > scaled["metadata"]["generation"]
    assert rolled["spec"]["template"]["metadata"]["labels"][objects.LABEL_SNAPSHOT] == "snap-2"
    pods = k8s_fake.list("pods", NS)
    live = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
    assert {p["metadata"]["labels"][objects.LABEL_SNAPSHOT] for p in live} == {"snap-2"}
    # The old snapshot's payload is gone; the new one is owned by the Deployment.
    assert k8s_fake.get("secrets", "mlc-ocr-snap-1", NS) is None
    owners = k8s_fake.get("secrets", "mlc-ocr-snap-2", NS)["metadata"]["ownerReferences"]
    assert owners[0]["kind"] == "Deployment"
    backend.remove_service("ocr")


def test_a_kernels_service_is_pruned_once_the_kernel_is_gone_a_deployed_one_stays(k8s_fake):
    import socket

    from mlcontainer_magics.backends.kubernetes.services import ANNOTATION_OWNER

    k8s_fake.script("mlc-", run=stub_server())
    backend = backend_for(k8s_fake)
    gone = f"{socket.gethostname()}:{2**22 + 7}"  # no such process
    deploy(backend, service="ocr", owner=gone)
    deploy(backend, service="lang", owner=gone)
    deploy(backend, service="lang", run_id="snap-2")  # deployed again, by no kernel
    annotations = k8s_fake.get("deployments", "mlc-lang", NS)["metadata"]["annotations"]
    assert ANNOTATION_OWNER not in annotations
    assert [s["owner"] for s in backend.deployed_services()] == [None, gone]
    assert backend.prune_services() == [
        f"removed service ocr (deployment/mlc-ocr in {NS}; its kernel {gone} is gone)"
    ]
    assert [s["name"] for s in backend.deployed_services()] == ["lang"]
    backend.remove_service("lang")


def test_an_image_the_nodes_cannot_pull_is_said_and_a_first_deploy_is_removed(k8s_fake):
    k8s_fake.script("mlc-ocr", scenario="image_pull")
    with pytest.raises(RolloutFailed, match=r"cannot pull the image .*image_pull_secret") as e:
        deploy(backend_for(k8s_fake))
    assert e.value.kind == "image-pull" and "Nothing of it was left" in str(e.value)
    assert k8s_fake.list("deployments", NS) == [] and k8s_fake.list("services", NS) == []
    assert k8s_fake.list("secrets", NS) == []


def test_no_node_that_fits_is_said_after_schedule_timeout(k8s_fake):
    k8s_fake.script("mlc-ocr", scenario="unschedulable")
    with pytest.raises(RolloutFailed, match=r"cannot schedule the pod.*Insufficient cpu") as e:
        deploy(backend_for(k8s_fake, schedule_timeout=0.3))
    assert e.value.kind == "unschedulable"


def test_a_crash_loop_is_said_with_the_containers_last_log_lines(k8s_fake):
    k8s_fake.script(
        "mlc-ocr",
        scenario="crash_loop",
        logs=["loading the model", "mlcontainer: the cell defines no function predict(...)"],
        exit_code=2,
    )
    with pytest.raises(RolloutFailed) as e:
        deploy(backend_for(k8s_fake))
    message = str(e.value)
    assert e.value.kind == "crash-loop"
    assert "exited with code 2" in message and "CrashLoopBackOff" in message
    assert "mlcontainer: the cell defines no function predict(...)" in e.value.logs
    assert message.endswith(e.value.logs)


def test_a_failed_redeploy_rolls_back_to_the_snapshot_that_served(k8s_fake):
    k8s_fake.script("mlc-ocr", run=stub_server())
    backend = backend_for(k8s_fake)
    deploy(backend, replicas=2)
    k8s_fake.script("mlc-ocr", scenario="crash_loop", logs=["Traceback: boom"])
    with pytest.raises(RolloutFailed, match="rolled back: snapshot snap-1 serves as before"):
        deploy(backend, run_id="snap-2", replicas=2)
    k8s_fake.script("mlc-ocr", run=stub_server())
    rolled = k8s_fake.wait_for(
        lambda: (
            (d := k8s_fake.get("deployments", "mlc-ocr", NS))["status"].get("availableReplicas")
            == 2
            and d
        )
    )
    labels = rolled["spec"]["template"]["metadata"]["labels"]
    assert labels[objects.LABEL_SNAPSHOT] == "snap-1"
    assert backend.call_service("ocr", "healthz")[0] == 200
    backend.remove_service("ocr")


def test_a_deployment_the_cluster_refuses_says_why_and_leaves_nothing(k8s_fake):
    from mlcontainer_magics.errors import KubernetesError

    k8s_fake.fault(
        403,
        method="POST",
        path="/deployments$",
        reason="Forbidden",
        message='deployments.apps "mlc-ocr" is forbidden: exceeded quota: compute, requested: '
        "limits.cpu=2, used: limits.cpu=8, limited: limits.cpu=8",
    )
    with pytest.raises(KubernetesError, match="ResourceQuota of namespace mlc"):
        deploy(backend_for(k8s_fake))
    for resource in ("deployments", "services", "secrets"):
        assert k8s_fake.list(resource, NS) == [], resource


def test_the_progress_deadline_is_said(k8s_fake):
    k8s_fake.script("mlc-ocr", run=lambda pod: time.sleep(30) if not pod.cancelled else 0)
    k8s_fake.time_scale = 0.001  # progressDeadlineSeconds 600 -> 0.6 s
    with pytest.raises(RolloutFailed, match="timed out progressing") as e:
        deploy(backend_for(k8s_fake))
    assert e.value.kind == "deadline"


def test_the_fake_refuses_what_the_api_server_refuses(k8s_fake):
    from kubernetes.client.rest import ApiException

    backend = backend_for(k8s_fake)
    api, _ = backend.connect()
    _, deployment, service = manifests()
    bad = json.loads(json.dumps(deployment))
    bad["spec"]["selector"]["matchLabels"]["x"] = "y"
    with pytest.raises(ApiException) as e:
        api.apps.create_namespaced_deployment(NS, bad)
    assert e.value.status == 422 and "selector" in e.value.body
    bad = json.loads(json.dumps(service))
    bad["metadata"]["name"] = "1-ocr"
    with pytest.raises(ApiException) as e:
        api.core.create_namespaced_service(NS, bad)
    assert e.value.status == 422 and "DNS-1035" in e.value.body
    api.apps.create_namespaced_deployment(NS, deployment)
    with pytest.raises(ApiException) as e:
        api.apps.patch_namespaced_deployment(
            "mlc-ocr",
            NS,
            {"spec": {"selector": {"matchLabels": {"a": "b"}}}},
            _content_type="application/merge-patch+json",
        )
    assert e.value.status == 422 and "immutable" in e.value.body
    # No ready endpoint: 503 in the API server's words.
    api.core.create_namespaced_service(NS, service)
    status, _, body = backend.call_service("ocr", "healthz")
    assert status == 503 and b'no endpoints available for service \\"mlc-ocr\\"' in body
    backend.remove_service("ocr")


def test_the_services_contract_on_the_fake(k8s_fake, tmp_path):
    """What core.services asks of a backend: start (deployed and rolled out: its handle, the
    pods' output), logs, running, wait (until it is served again or removed), stop."""
    from mlcontainer_magics.core.spec import ServeSpec

    k8s_fake.script("mlc-ocr", run=stub_server())
    backend = backend_for(k8s_fake)
    pool = backend.services
    assert pool.max_replicas > 1
    spec = make_spec(serve=ServeSpec("ocr", replicas=2))
    workdir = tmp_path / "run"
    workdir.mkdir()
    for name, data in FILES.items():
        (workdir / name).write_bytes(data)
    printed = []
    handle = pool.start(
        spec, ENV, workdir, run_id="snap-1", output=lambda s, t: printed.append((s, t))
    )
    assert handle.url.endswith("/services/mlc-ocr:80/proxy") and handle.ident == "mlc-ocr"
    assert printed == [("stdout", "serving\n")]  # one pod's output, up to serving
    assert pool.logs(handle).count("serving\n") == 2  # each pod's, under its name
    assert [(h.name, h.run_id) for h in pool.running()] == [("ocr", "snap-1")]
    assert backend.is_running("snap-1")
    # Served again: the same Deployment rolls; stopping the old handle lets it go (its wait
    # ends) and removes nothing: the new snapshot serves on.
    newer = pool.start(spec, ENV, workdir, run_id="snap-2")
    assert pool.stop(handle) is True
    assert pool.wait(handle).reason == "stopped"
    assert k8s_fake.get("deployments", "mlc-ocr", NS) is not None
    ended = []
    waiter = threading.Thread(target=lambda: ended.append(pool.wait(newer)))
    waiter.start()
    assert backend.stop("snap-2") is True  # as request_stop does, from another process
    waiter.join(30)
    assert ended and ended[0].reason == "stopped"
    assert k8s_fake.list("deployments", NS) == [] and not backend.is_running("snap-2")


def test_the_services_contract_says_why_a_cell_cannot_serve(k8s_fake, tmp_path):
    from mlcontainer_magics.core.spec import ServeSpec
    from mlcontainer_magics.errors import ServiceFailed

    k8s_fake.script("mlc-ocr", scenario="crash_loop", logs=["ZeroDivisionError: boom"])
    workdir = tmp_path / "run"
    workdir.mkdir()
    for name, data in FILES.items():
        (workdir / name).write_bytes(data)
    with pytest.raises(ServiceFailed, match="crash|CrashLoopBackOff") as e:
        backend_for(k8s_fake).services.start(
            make_spec(serve=ServeSpec("ocr")), ENV, workdir, run_id="snap-1"
        )
    assert "ZeroDivisionError: boom" in e.value.stderr
    assert k8s_fake.list("deployments", NS) == []


# -- calling a service on the cluster by name, and prune -------------------------------------


def runner_pod(folder, cell, **kwargs):
    """A ``run=`` callback: the container is the real runner serving ``cell``, run as a
    process of this machine (tests/test_serve_runner.py's Served), until the kubelet stops it."""
    from test_serve_runner import Served

    def container(pod):
        served = Served(folder / pod.pod["metadata"]["name"], cell, **kwargs).ready()
        try:
            return serve_until_stopped(pod, served.port, 0)
        finally:
            served.close()

    return container


def serving_record(store, backend, deployed, kernel, created, sid=None):
    """A record of the service ``deployed`` serving, as core.services.serve writes it."""
    sid = sid or store.new_id({"name": deployed.name})
    block = {"name": deployed.name, "url": deployed.url, "port": None, "entry": "predict"}
    store.put(
        {
            "id": sid,
            "name": deployed.name,
            "status": "serving",
            "created": created,
            "kernel": kernel,
            "backend": "kubernetes",
            "namespace": "mlctest",
            "target": backend.target(),
            "service": {**block, "replicas": 1, "backend": "kubernetes"},
        }
    )
    return sid


def test_a_kernel_calls_a_service_on_the_cluster_by_name(ip, k8s_fake, tmp_path):
    """mlcontainer_magics.service(NAME) of a service served on Kubernetes: found in the
    kernel's store (%config ContainerizeMagics.store_dir, not the environment's), passing over
    a record whose process died, and called through the API server's service proxy with the
    kubeconfig's credentials (the backend's transport): a call, health(), metadata(), errors."""
    import dataclasses
    import os
    import socket

    from test_serve_runner import ECHO

    import mlcontainer_magics
    from mlcontainer_magics.client import ServiceClient
    from mlcontainer_magics.core.owner import OWNER
    from mlcontainer_magics.errors import ServiceError

    (tmp_path / "pods").mkdir()
    k8s_fake.script("mlc-echo", run=runner_pod(tmp_path / "pods", ECHO, inputs={"scale": 3}))
    backend = backend_for(k8s_fake)
    deployed = deploy(backend, service="echo", owner=OWNER)
    magics = ip.magics_manager.registry["ContainerizeMagics"]
    before = magics.store_dir
    ip.run_line_magic("config", f"KubernetesConfig.kubeconfig = {str(k8s_fake.kubeconfig)!r}")
    ip.run_line_magic("config", f"ContainerizeMagics.store_dir = {str(tmp_path / 'kstore')!r}")
    try:
        store = magics.store
        assert str(store.root) != os.environ["MLCONTAINER_STORE"]
        now = time.time()
        serving_record(store, backend, deployed, OWNER, now)
        dead = f"{socket.gethostname()}:{2**22 + 7}"  # no such process
        nowhere = dataclasses.replace(deployed, url="http://127.0.0.1:9")
        serving_record(store, backend, nowhere, dead, now + 1)  # newer, but its process died

        echo = mlcontainer_magics.service("echo")
        assert echo.url == deployed.url
        assert echo([1, 2]) == {"echo": [1, 2], "scale": 3}
        assert echo.health() == {"status": "ok"}
        assert echo.metadata()["name"] == "echo" and echo.entry == "predict"
        with pytest.raises(ServiceError, match="answered 500: predict raised ValueError: boom"):
            echo("boom")
        # The same URL without the kubeconfig's credentials: the API server refuses.
        with pytest.raises(ServiceError) as e:
            ServiceClient(deployed.url).health()
        assert e.value.status == 401

        backend.remove_service("echo")
        k8s_fake.wait_for(lambda: not k8s_fake.list("pods", NS))
        with pytest.raises(ServiceError, match=r"service 'echo' \(http.*answered 404: .*mlc-echo"):
            echo.health()
    finally:
        ip.run_line_magic("config", f"ContainerizeMagics.store_dir = {before!r}")


class EngineWithNothing:
    """The default backend of a prune that is not the cluster: nothing of its own to prune."""

    name = "docker"

    def prune_orphans(self):
        return []

    def prune_images(self, keep):
        return []


def test_prune_stops_a_dead_kernels_service_on_the_cluster_and_marks_it_stopped(k8s_fake, tmp_path):
    """prune (its default backend another than the cluster) stops, through the backend that
    runs it, the service of a kernel that died, and records it stopped; a live kernel's stays;
    a cluster that refuses leaves the record serving, saying why."""
    import socket

    from mlcontainer_magics.core import snapshots
    from mlcontainer_magics.core.owner import OWNER
    from mlcontainer_magics.core.store import Store

    k8s_fake.script("mlc-", run=stub_server())
    backend = backend_for(k8s_fake)
    store = Store(tmp_path / "store")
    dead = f"{socket.gethostname()}:{2**22 + 7}"  # no such process
    ids = {}
    for name, kernel in (("ocr", dead), ("lang", OWNER), ("mt", dead)):
        ids[name] = store.new_id({"name": name})
        deployed = deploy(backend, run_id=ids[name], service=name, owner=kernel)
        serving_record(store, backend, deployed, kernel, time.time(), sid=ids[name])
    # The cluster refuses to delete mt's Deployment (once): its record stays serving.
    k8s_fake.fault(403, method="DELETE", path="/deployments/mlc-mt$", reason="Forbidden")

    def backend_of(record):
        return backend if record.get("backend") == "kubernetes" else EngineWithNothing()

    done = snapshots.prune(store, EngineWithNothing(), backend_of=backend_of)
    assert f"stopped service ocr ({ids['ocr']}) on kubernetes" in done
    assert f"marked {ids['ocr']} stopped (its kernel went away)" in done
    assert [line for line in done if line.startswith(f"left service {ids['mt']} serving: ")]
    assert [d["metadata"]["name"] for d in k8s_fake.list("deployments", NS)] == [
        "mlc-lang",
        "mlc-mt",
    ]
    record = store.get(ids["ocr"])
    assert (record["status"], record["reason"]) == ("stopped", "its kernel went away")
    assert store.get(ids["lang"])["status"] == store.get(ids["mt"])["status"] == "serving"

    done = snapshots.prune(store, EngineWithNothing(), backend_of=backend_of)  # once it can
    assert f"marked {ids['mt']} stopped (its kernel went away)" in done
    assert [d["metadata"]["name"] for d in k8s_fake.list("deployments", NS)] == ["mlc-lang"]
    backend.remove_service("lang")


# -- with Docker: plain docker build/run of the export, and pods of the real runner ------------


def _docker(*args, check=True, timeout=600):
    done = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)}: {done.returncode}\n{done.stderr}")
    return done


def _call(url, body=None, timeout=5.0):
    request = urllib.request.Request(
        url,
        data=body,
        headers={"Content-Type": "application/json"} if body is not None else {},
        method="POST" if body is not None else "GET",
    )
    with urllib.request.urlopen(request, timeout=timeout) as answer:
        return answer.status, json.loads(answer.read())


def _until_healthy(url, timeout=60.0):
    deadline = time.monotonic() + timeout
    while True:
        try:
            return _call(url + "/healthz")
        except (OSError, urllib.error.URLError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


@pytest.mark.docker
@pytest.mark.usefixtures("no_leaks")
def test_export_serve_builds_and_serves_with_plain_docker(tmp_path, namespace):
    store, run_id, _ = recorded(
        tmp_path, code="def predict(values):\n    return [v + x for v in values]\n"
    )
    store.update(run_id, env_image="python:3.11-slim")
    dest = export(store, run_id, tmp_path / "export", None, serve=True)
    tag = f"mlctest-serve-{run_id}"
    containers = []
    try:
        _docker("build", "-q", "-t", tag, str(dest))
        for extra in ([], ["--read-only", "--tmpfs", "/tmp"]):  # and as the Deployment runs it
            cid = _docker(
                "run",
                "-d",
                "-p",
                "127.0.0.1::8080",
                "--label",
                f"org.mlcontainer.namespace={namespace}",
                *extra,
                tag,
            ).stdout.strip()
            containers.append(cid)
            port = _docker("port", cid, "8080/tcp").stdout.split(":")[-1].strip()
            url = f"http://127.0.0.1:{port}"
            assert _until_healthy(url) == (200, {"status": "ok"})
            assert _call(url + "/predict", b"[1, 2]") == (200, [42, 43])
            meta = _call(url + "/metadata")[1]
            assert (meta["snapshot"], meta["name"], meta["entry"]) == (run_id, "doubler", "predict")
            assert _docker("exec", cid, "id", "-u").stdout.strip() == "1000"
            # The image's HEALTHCHECK, as the engine runs it: Python alone, no curl.
            check = json.loads(
                _docker("inspect", "--format", "{{json .Config.Healthcheck}}", tag).stdout
            )
            assert check["Test"][0] == "CMD" and check["Test"][1] == "python"
            assert _docker("exec", cid, *check["Test"][1:], check=False).returncode == 0
    finally:
        for cid in containers:
            _docker("rm", "-f", cid, check=False)
        _docker("rmi", "-f", tag, check=False)


def _pushed_tags(client, registry, image_ref):
    image = client.images.get(image_ref)
    return [t for t in image.tags if t.startswith(registry.host + "/")]


@pytest.mark.docker
@pytest.mark.usefixtures("no_leaks")
def test_deploy_serves_the_real_runner_through_the_proxy_and_redeploys(
    k8s_fake, registry, docker_engine, docker_images, namespace, tmp_path, monkeypatch, capsys
):
    """`mlcontainer deploy ID --replicas 2`: the image pushed to a real registry, the pods
    run by the real engine with the real runner serving, called through the fake API server's
    service proxy; then --replicas 1 patches it in place; then it is removed."""
    from test_k8s_backend import docker_pod

    from mlcontainer_magics.frontends import cli

    store, run_id, _ = recorded(
        tmp_path, code="def predict(values):\n    return [v * x for v in values]\n"
    )
    store.update(run_id, base_image_id=docker_engine.images.get("python:3.11-slim").id)
    k8s_fake.script("mlc-", run=docker_pod(docker_engine, namespace, tmp_path, serve=True))
    monkeypatch.setenv("MLCONTAINER_STORE", str(store.root))
    monkeypatch.setenv("MLCONTAINER_NAMESPACE", namespace)
    monkeypatch.setenv("KUBECONFIG", str(k8s_fake.kubeconfig))
    for key, value in [
        ("NAMESPACE", NS),
        ("REGISTRY", registry.host),
        ("REGISTRY_USERNAME", registry.username),
        ("REGISTRY_PASSWORD", registry.password),
    ]:
        monkeypatch.setenv(f"MLCONTAINER_K8S_{key}", value)
    backend = backend_for(k8s_fake)
    try:
        assert cli.main(["deploy", run_id, "--replicas", "2"]) == 0
        out = capsys.readouterr().out
        assert "deployed 'doubler'" in out and "2 replica(s) ready" in out
        assert "/api/v1/namespaces/mlc/services/mlc-doubler:80/proxy" in out
        status, _, body = post_json(backend, "doubler", b"[1, 2]")
        assert (status, json.loads(body)) == (200, [41, 82])
        meta = json.loads(backend.call_service("doubler", "metadata")[2])
        assert meta["snapshot"] == run_id
        assert store.get(run_id)["deployed"][0]["replicas"] == 2

        assert cli.main(["deploy", run_id, "--replicas", "1"]) == 0
        deployment = k8s_fake.get("deployments", "mlc-doubler", NS)
        assert deployment["spec"]["replicas"] == 1
        k8s_fake.wait_for(lambda: len(k8s_fake.list("pods", NS)) == 1, timeout=60)
        assert backend.call_service("doubler", "healthz")[0] == 200
    finally:
        with contextlib.suppress(Exception):
            backend.remove_service("doubler")
        k8s_fake.wait_for(lambda: not k8s_fake.list("pods", NS), timeout=60)
        docker_images.extend(_pushed_tags(docker_engine, registry, "python:3.11-slim"))


@pytest.mark.docker
@pytest.mark.usefixtures("no_leaks")
def test_containerize_serve_on_kubernetes_rolls_out_replaces_and_stops(
    ip, k8s_fake, registry, docker_engine, docker_images, namespace, tmp_path, capsys
):
    """%%containerize --serve NAME --backend kubernetes: the cell's pods on the real engine,
    its snapshot recorded as serving with the proxy URL; served again, the same Deployment
    rolls to the new snapshot (the old one recorded as replaced); stopped, nothing is left."""
    from test_k8s_backend import docker_pod

    from mlcontainer_magics.core import services

    k8s_fake.script("mlc-", run=docker_pod(docker_engine, namespace, tmp_path, serve=True))
    for key, value in [
        ("kubeconfig", str(k8s_fake.kubeconfig)),
        ("k8s_namespace", NS),
        ("registry", registry.host),
        ("registry_username", registry.username),
        ("registry_password", registry.password),
    ]:
        ip.run_line_magic("config", f"KubernetesConfig.{key} = {value!r}")
    store = ip.magics_manager.registry["ContainerizeMagics"].store
    backend = backend_for(k8s_fake)
    cell = "print('loading', k)\ndef predict(values):\n    return [v * k for v in values]\n"
    try:
        ip.user_ns["k"] = 3
        ip.run_cell_magic(
            "containerize", "--serve k8s-triple --backend kubernetes --replicas 2 --in k", cell
        )
        first = services.REGISTRY.get("k8s-triple")
        assert first is not None and first.url.endswith("/services/mlc-k8s-triple:80/proxy")
        assert "loading 3" in capsys.readouterr().out
        record = store.get(first.run_id)
        assert record["status"] == "serving" and record["service"]["replicas"] == 2
        answer = post_json(backend, "k8s-triple", b"[1, 2]")
        assert json.loads(answer[2]) == [3, 6]

        ip.user_ns["k"] = 4
        ip.run_cell_magic(
            "containerize", "--serve k8s-triple --backend kubernetes --replicas 2 --in k", cell
        )
        second = services.REGISTRY.get("k8s-triple")
        assert second.run_id != first.run_id
        answer = post_json(backend, "k8s-triple", b"[1]")
        assert json.loads(answer[2]) == [4]
        first.ended.wait(30)
        old = store.get(first.run_id)
        assert (old["status"], old.get("replaced_by")) == ("stopped", second.run_id)
        assert len(k8s_fake.list("deployments", NS)) == 1
    finally:
        if services.REGISTRY.get("k8s-triple") is not None:
            services.REGISTRY.stop("k8s-triple")
        k8s_fake.wait_for(lambda: not k8s_fake.list("pods", NS), timeout=60)
        docker_images.extend(_pushed_tags(docker_engine, registry, "python:3.11-slim"))
    assert store.get(second.run_id)["status"] == "stopped"
    assert k8s_fake.list("deployments", NS) == [] and k8s_fake.list("services", NS) == []
