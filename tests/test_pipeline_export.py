"""Pipeline export (`export ID DIR --pipeline [--k8s]`): the layout, run.sh and pipeline.yaml as
text and data, refusals that leave nothing behind, and on the real engine three chained cells
reproduced by run.sh with plain docker after every image of the chain is gone."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

# the fixtures of the lineage tests: a real IPython shell and its store
from test_lineage import cell, on_engine

from mlcontainer_magics.backends.pipeline_export import export_pipeline, plan, run_script
from mlcontainer_magics.core import transfer
from mlcontainer_magics.core.spec import EnvSpec, RunSpec
from mlcontainer_magics.core.store import Store
from mlcontainer_magics.errors import SpecError, StoreError
from mlcontainer_magics.runner import mlc_runner

pytest_plugins = ["k8s_fake"]

K = "host:1"
CHAIN = [  # name, code, inputs from the notebook, inputs from (step, output), outputs
    ("ocr", "text = ' '.join(words)", {"words": ["bonjour", "le", "monde"]}, {}, ["text"]),
    ("detect", "lang = 'fr' if 'bonjour' in text else '?'", {}, {"text": (0, "text")}, ["lang"]),
    (
        "translate",
        "english = text.upper() + lang",
        {},
        {"text": (0, "text"), "lang": (1, "lang")},
        ["english"],
    ),
]


def make_chain(store: Store, chain=CHAIN, **spec_kw) -> list[dict]:
    """Records of a chain of runs as the kernel leaves them (kept inputs and outputs, digests,
    parents), computed here in-process: no engine."""
    records, values = [], []
    for i, (name, code, notebook, linked, outputs) in enumerate(chain):
        sid = f"{i + 1:04d}aaaabbbb"
        folder = store.artifacts_dir(sid)
        inputs = {**notebook, **{k: values[s][o] for k, (s, o) in linked.items()}}
        ins = transfer.write_inputs(inputs, folder / "in")
        namespace = dict(inputs)
        exec(code, namespace)
        (folder / "out").mkdir()
        mlc_runner.write_outputs(outputs, namespace, {"python": "3.11"}, str(folder / "out"))
        outs = {}
        for o in outputs:
            path = folder / "out" / f"v-{o}.json"
            outs[o] = {"format": "json", "digest": transfer.file_digest(path), "size": 1}
        values.append({o: namespace[o] for o in outputs})
        parents = [
            {"input": k, "from": "notebook", "digest": ins[k]["digest"]} for k in notebook
        ] + [
            {
                "input": k,
                "snapshot": records[s]["id"],
                "output": o,
                "digest": ins[k]["digest"],
            }
            for k, (s, o) in linked.items()
        ]
        spec = RunSpec(
            code=code,
            env_spec=EnvSpec("python:3.11-slim"),
            name=name,
            inputs=tuple(inputs),
            outputs=tuple(outputs),
            **spec_kw,
        )
        (folder / "manifest.json").write_text(
            json.dumps({"inputs": ins, "outputs": outputs, "host": {"python": "3.11"}})
        )
        record = {
            "id": sid,
            "name": name,
            "status": "done",
            "created": 1000.0 + i,
            "kernel": K,
            "code": code,
            "spec": spec.to_dict(),
            "inputs": ins,
            "outputs": outs,
            "parents": parents,
            "lock": [],
            "stdout": "",
            "env_image": "python:3.11-slim",
        }
        store.put(record)
        records.append(record)
    return records


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "store")
    yield s
    s.close()


# -- layout and run.sh (pure) -----------------------------------------------------------------


def test_the_layout_and_run_sh(store, tmp_path):
    ocr, detect, translate = make_chain(store)
    dest = export_pipeline(store, translate["id"], tmp_path / "pipe", backend=None)
    assert sorted(p.name for p in dest.iterdir()) == [
        "README.md",
        "inputs",
        "pipeline.json",
        "run.sh",
        "steps",
    ]
    assert sorted(p.name for p in (dest / "steps").iterdir()) == [
        "01-ocr",
        "02-detect",
        "03-translate",
    ]
    for step in (dest / "steps").iterdir():
        assert (step / "Dockerfile").read_text().startswith("FROM python:3.11-slim\n")
        assert not (step / "mlc" / "in").exists()  # its values come from run.sh
        assert (step / "mlc" / "runner.py").exists() and (step / "mlc" / "cell.py").exists()
    manifest = json.loads((dest / "steps" / "03-translate" / "mlc" / "manifest.json").read_text())
    assert manifest["inputs"]["lang"]["file"] == "in/lang.json"
    assert manifest["host"] == {"python": "3.11"}  # outputs in the formats they were recorded in
    kept = store.artifacts_dir(ocr["id"]) / "in" / "words.json"
    assert (dest / "inputs" / "01-ocr" / "words.json").read_bytes() == kept.read_bytes()
    assert [p.name for p in (dest / "inputs").iterdir()] == ["01-ocr"]

    script = (dest / "run.sh").read_text()
    assert os.access(dest / "run.sh", os.X_OK)
    assert script.startswith("#!/bin/sh\n") and "\nset -eu\n" in script
    assert subprocess.run(["sh", "-n", str(dest / "run.sh")]).returncode == 0
    assert 'HERE=$(CDPATH="" cd -- "$(dirname -- "$0")" && pwd)' in script  # from any folder
    lines = [line for line in script.splitlines() if line.startswith(("take ", "run_step "))]
    assert lines == [
        'take "$HERE/inputs/01-ocr/words.json" "$VALUES/01-ocr/in/words.json"',
        "run_step 01-ocr",
        'take "$VALUES/01-ocr/out/v-text.json" "$VALUES/02-detect/in/text.json"',
        "run_step 02-detect",
        'take "$VALUES/01-ocr/out/v-text.json" "$VALUES/03-translate/in/text.json"',
        'take "$VALUES/02-detect/out/v-lang.json" "$VALUES/03-translate/in/lang.json"',
        "run_step 03-translate",
    ]
    assert '-v "$VALUES/$step/in:/mlc/in:ro"' in script
    assert '-v "$VALUES/$step/out:/mlc/out" "$IMAGE:$step"' in script
    assert f'IMAGE="${{MLC_PIPELINE_IMAGE:-mlc-pipeline-{translate["id"]}}}"' in script
    assert script.rstrip().endswith('ls "$VALUES/03-translate/out"')

    described = json.loads((dest / "pipeline.json").read_text())
    assert [s["snapshot"] for s in described["steps"]] == [ocr["id"], detect["id"], translate["id"]]
    assert described["steps"][2]["inputs"]["lang"] == {
        "file": "in/lang.json",
        "from": "02-detect",
        "takes": "values/02-detect/out/v-lang.json",
    }
    assert (
        described["steps"][2]["outputs"]["english"]["digest"]
        == (translate["outputs"]["english"]["digest"])
    )
    text = (dest / "README.md").read_text()
    assert "sh run.sh" in text and "values/03-translate/out/" in text


def test_run_sh_passes_the_recorded_run_options(store):
    make_chain(store, network="none", memory=2**30, env=(("MODE", "fast x"), ("API_KEY", "***")))
    root, steps = plan(store, "translate")
    script = run_script(root, steps)
    assert (
        "run_step 01-ocr --network none --memory 1073741824 -e 'MODE=fast x' -e API_KEY" in script
    )


def test_mounted_inputs_travel_with_their_step_or_are_mounted_by_run_sh(store, tmp_path):
    ocr, _, translate = make_chain(store)
    data = tmp_path / "my data"
    data.mkdir()
    (data / "table.csv").write_text("a,b\n1,2\n")
    mount = {"source": str(data), "target": "/work/data", "mode": "ro", "size": 8, "count": 1}
    store.update(ocr["id"], mounts=[mount])
    small = export_pipeline(store, translate["id"], tmp_path / "small", backend=None)
    copied = small / "steps" / "01-ocr" / "data" / "work" / "data" / "table.csv"
    assert copied.read_text() == "a,b\n1,2\n"
    assert "\nrun_step 01-ocr\n" in (small / "run.sh").read_text()
    large = export_pipeline(store, translate["id"], tmp_path / "large", backend=None, data_limit=4)
    assert not (large / "steps" / "01-ocr" / "data").exists()
    assert (large / "steps" / "01-ocr" / "DATA.md").exists()
    assert f"run_step 01-ocr -v '{data}:/work/data:ro'\n" in (large / "run.sh").read_text()


def test_a_fan_in_takes_each_value_from_its_own_step(store):
    fan_in = [
        ("left", "a = [1, 2]", {}, {}, ["a"]),
        ("right", "b = {'k': k}", {"k": 3}, {}, ["b"]),
        ("join", "c = a + [b['k']]", {}, {"a": (0, "a"), "b": (1, "b")}, ["c"]),
    ]
    make_chain(store, fan_in)
    root, steps = plan(store, "join")
    assert [s.folder for s in steps] == ["01-left", "02-right", "03-join"]
    script = run_script(root, steps)
    assert 'take "$HERE/inputs/02-right/k.json" "$VALUES/02-right/in/k.json"' in script
    assert 'take "$VALUES/01-left/out/v-a.json" "$VALUES/03-join/in/a.json"' in script
    assert 'take "$VALUES/02-right/out/v-b.json" "$VALUES/03-join/in/b.json"' in script
    runs = [line for line in script.splitlines() if line.startswith("run_step ")]
    assert runs == ["run_step 01-left", "run_step 02-right", "run_step 03-join"]


def test_the_chain_s_start_may_be_any_step(store, tmp_path):
    make_chain(store)
    dest = export_pipeline(store, "detect", tmp_path / "pipe", backend=None)
    assert sorted(p.name for p in (dest / "steps").iterdir()) == ["01-ocr", "02-detect"]
    one = export_pipeline(store, "ocr", tmp_path / "one", backend=None, k8s=True)
    assert [p.name for p in (one / "steps").iterdir()] == ["01-ocr"]
    import yaml

    job = list(yaml.safe_load_all((one / "pipeline.yaml").read_text()))[1]
    assert "initContainers" not in job["spec"]["template"]["spec"]  # a pipeline of one step


# -- refusals: clear, before anything is written ---------------------------------------------


def nothing_left(tmp_path, name="pipe") -> bool:
    return not (tmp_path / name).exists() and not (tmp_path / f".{name}.partial").exists()


def test_a_removed_step_is_refused(store, tmp_path):
    ocr, _, translate = make_chain(store)
    store.remove(ocr["id"])
    with pytest.raises(StoreError, match=rf"Step 1 \({ocr['id']}\) .* removed .*step 2.*step 3"):
        export_pipeline(store, translate["id"], tmp_path / "pipe", backend=None)
    assert nothing_left(tmp_path)


def test_a_step_without_its_spec_is_refused(store, tmp_path):
    _, detect, translate = make_chain(store)
    store.update(detect["id"], spec=None)
    with pytest.raises(StoreError, match=f"Step 2 .*: Snapshot {detect['id']} has no recorded"):
        export_pipeline(store, translate["id"], tmp_path / "pipe", backend=None)
    assert nothing_left(tmp_path)


def test_a_notebook_value_not_kept_is_refused(store, tmp_path):
    ocr, _, translate = make_chain(store)
    (store.artifacts_dir(ocr["id"]) / "in" / "words.json").unlink()
    with pytest.raises(SpecError, match="input words that came from the notebook is not kept"):
        export_pipeline(store, translate["id"], tmp_path / "pipe", backend=None)
    assert nothing_left(tmp_path)


def test_a_folder_not_empty_is_refused(store, tmp_path):
    make_chain(store)
    (tmp_path / "pipe").mkdir()
    (tmp_path / "pipe" / "mine.txt").write_text("keep me")
    with pytest.raises(SpecError, match="exists and is not empty"):
        export_pipeline(store, "translate", tmp_path / "pipe", backend=None)
    assert [p.name for p in (tmp_path / "pipe").iterdir()] == ["mine.txt"]
    assert not (tmp_path / ".pipe.partial").exists()


def test_a_failure_half_way_leaves_nothing(store, tmp_path, monkeypatch):
    make_chain(store)
    from mlcontainer_magics.backends import pipeline_export

    def broken(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(pipeline_export, "run_script", broken)
    with pytest.raises(RuntimeError, match="disk on fire"):
        export_pipeline(store, "translate", tmp_path / "pipe", backend=None)
    assert nothing_left(tmp_path)


def test_the_cli_refuses_options_of_a_single_export(store, tmp_path):
    from mlcontainer_magics.backends import Backends
    from mlcontainer_magics.config import MlcontainerSettings
    from mlcontainer_magics.frontends.commands import build_parser, run_verb

    make_chain(store)
    args = build_parser().parse_args(["export", "translate", str(tmp_path / "p"), "--pipeline"])
    assert args.pipeline and not args.k8s
    args = build_parser(for_magic=True).parse_args(["export", "x", "d", "--pipeline", "--k8s"])
    assert args.pipeline and args.k8s
    args = build_parser().parse_args(
        ["export", "translate", str(tmp_path / "p"), "--pipeline", "--tar"]
    )
    with pytest.raises(SpecError, match="--tar: not with --pipeline"):
        run_verb(args, store=store, backends=Backends(MlcontainerSettings()))
    assert nothing_left(tmp_path, "p")


# -- on the real engine -----------------------------------------------------------------------


def mlcontainer(*args):
    proc = subprocess.run(
        [sys.executable, "-m", "mlcontainer_magics.frontends.cli", *args],
        capture_output=True,
        text=True,
        env=os.environ.copy(),
        timeout=600,
    )
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}"
    return proc.stdout


@on_engine
def test_run_sh_reproduces_the_last_output_with_plain_docker(
    ip,
    store_of_ip,  # noqa: F811 - the fixture imported above
    tmp_path,
    docker_client,
    namespace,
):
    store = store_of_ip
    ip.user_ns["words"] = ["bonjour", "le", "monde"]
    cell(ip, "-n ocr --in words --out text", "text = ' '.join(words)")
    cell(
        ip,
        "-n detect -r six==1.16.0 --in text --out lang",
        "import six\nlang = 'fr' if 'bonjour' in text else '?'",
    )
    cell(  # a pin that conflicts with the step before: each step has its own environment
        ip,
        "-n translate -r six==1.15.0 --in text,lang --out english",
        "import six\nenglish = text.upper() + lang + six.__version__",
    )
    records = [store.get(n) for n in ("ocr", "detect", "translate")]
    last = records[-1]
    dest = tmp_path / "exported"
    said = mlcontainer("export", last["id"], str(dest), "--pipeline")
    assert f"exported the pipeline to {dest}" in said
    assert list((dest / "steps" / "02-detect" / "wheels").glob("six-1.16.0*.whl"))
    assert list((dest / "steps" / "03-translate" / "wheels").glob("six-1.15.0*.whl"))

    # a machine with none of the chain's environments (the base image stays: FROM needs it)
    for r in records:
        if r["env_image"] != r["spec"]["env_spec"]["base_image"]:
            docker_client.images.remove(r["env_image"], force=True)
    assert not [r for r in records if r["env_image"] != "python:3.11-slim" and _exists(r)]

    repository = f"{namespace}-pipeline"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    try:
        run = subprocess.run(
            ["sh", str(dest / "run.sh")],
            cwd=elsewhere,
            env={**os.environ, "MLC_PIPELINE_IMAGE": repository},
            capture_output=True,
            text=True,
            timeout=900,
        )
    finally:
        for step in ("01-ocr", "02-detect", "03-translate"):
            subprocess.run(["docker", "rmi", "-f", f"{repository}:{step}"], capture_output=True)
    assert run.returncode == 0, run.stderr[-3000:]
    out = dest / "values" / "03-translate" / "out"
    assert run.stdout.splitlines()[-3] == f"The last step's outputs (03-translate): {out}"
    recorded = last["outputs"]["english"]["digest"]
    made = out / "v-english.json"
    assert transfer.file_digest(made, transfer.digest_algorithm(recorded)) == recorded
    kept = store.artifacts_dir(last["id"]) / "out" / "v-english.json"
    assert made.read_bytes() == kept.read_bytes() == b'"BONJOUR LE MONDEfr1.15.0"'


def _exists(record) -> bool:
    return (
        subprocess.run(
            ["docker", "image", "inspect", record["env_image"]], capture_output=True
        ).returncode
        == 0
    )


def test_a_single_export_still_carries_its_values(store, tmp_path):
    """The pieces the pipeline reuses still make a whole single export."""
    from mlcontainer_magics.backends.export import export

    _, detect, _ = make_chain(store)
    dest = export(store, detect["id"], tmp_path / "one", backend=None, k8s=True)
    assert (dest / "mlc" / "in" / "text.json").exists() and (dest / "job.yaml").exists()
    manifest = json.loads((dest / "mlc" / "manifest.json").read_text())
    assert manifest["host"] == {"python": "", "numpy": False, "pyarrow": False}
    assert not (tmp_path / ".one.partial").exists()


# -- pipeline.yaml: valid, and run by the fake Kubernetes API server --------------------------

NS = "mlc"
# Runs a step's runner here, as the container would: its /mlc given as the first argument.
RUN_STEP = (
    "import sys; sys.path.insert(0, sys.argv[1]); import runner; "
    "sys.exit(runner.run_in(sys.argv[1], {'__name__': '__main__'}))"
)


def k8s_export(store, tmp_path, **config):
    from mlcontainer_magics.config import KubernetesConfig

    make_chain(store)
    dest = export_pipeline(
        store,
        "translate",
        tmp_path / "pipe",
        backend=None,
        k8s=True,
        k8s_config=KubernetesConfig(k8s_namespace=NS, **config),
    )
    import yaml

    return dest, list(yaml.safe_load_all((dest / "pipeline.yaml").read_text()))


def test_pipeline_yaml_is_one_job_of_the_steps_in_order_and_valid(store, tmp_path):
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    from mlcontainer_magics.backends.kubernetes.objects import (
        CONTAINER_SECURITY_CONTEXT,
        OLDEST_KUBERNETES,
        POD_SECURITY_CONTEXT,
    )

    dest, docs = k8s_export(store, tmp_path, registry="r.example.com/team")
    assert [d["kind"] for d in docs] == ["Secret", "Job"]
    for doc in docs:
        for version in (OLDEST_KUBERNETES, kubernetes_validate.latest_version()):
            kubernetes_validate.validate(doc, version, strict=True)
    # the file itself, as a user would check it
    tool = Path(sys.executable).with_name("kubernetes-validate")
    for version in (f"{OLDEST_KUBERNETES}.0", kubernetes_validate.latest_version()):
        checked = subprocess.run(
            [str(tool), "--strict", "-k", version, str(dest / "pipeline.yaml")],
            capture_output=True,
            text=True,
        )
        assert checked.returncode == 0, checked.stdout + checked.stderr
        assert checked.stdout.count(" passed for resource ") == 2
    secret, job = docs
    pod = job["spec"]["template"]["spec"]
    steps = [*pod["initContainers"], *pod["containers"]]
    assert [c["name"] for c in steps] == ["step-01-ocr", "step-02-detect", "step-03-translate"]
    repository = "r.example.com/team/mlc-pipeline-0003aaaabbbb"
    assert [c["image"] for c in steps] == [
        f"{repository}:01-ocr",
        f"{repository}:02-detect",
        f"{repository}:03-translate",
    ]
    assert pod["securityContext"] == POD_SECURITY_CONTEXT and pod["restartPolicy"] == "Never"
    assert all(c["securityContext"] == CONTAINER_SECURITY_CONTEXT for c in steps)
    assert job["spec"]["backoffLimit"] == 0
    mounts = {m["mountPath"]: m for m in steps[2]["volumeMounts"]}
    assert mounts["/mlc/out"] == {"name": "values-03-translate", "mountPath": "/mlc/out"}
    assert mounts["/mlc/in/lang.json"]["name"] == "values-02-detect"
    assert mounts["/mlc/in/lang.json"]["subPath"] == "v-lang.json"
    assert mounts["/mlc/in/lang.json"]["readOnly"] is True
    words = {m["mountPath"]: m for m in steps[0]["volumeMounts"]}["/mlc/in/words.json"]
    assert words["name"] == "inputs" and words["subPath"] == "01-ocr__words.json"
    assert (
        base64.b64decode(secret["data"]["01-ocr__words.json"])
        == (dest / "inputs" / "01-ocr" / "words.json").read_bytes()
    )
    assert {v["name"] for v in pod["volumes"] if "emptyDir" in v} == {
        "values-01-ocr",
        "values-02-detect",
        "values-03-translate",
    }
    assert "## On Kubernetes" in (dest / "README.md").read_text()
    assert (dest / "pipeline.yaml").read_text().startswith("# The 3 steps that led to")


def kubelet(dest: Path, where: Path, ran: list):
    """Acts as each container of the pipeline's pod on the fake: the image's /mlc (what its
    step's Dockerfile copies), its volumes as the kubelet mounts them (an emptyDir is a folder
    shared by the pod's containers, a subPath one file of it; the Secret's files as the fake
    gives them), then the runner, with this Python."""
    volumes = where / "volumes"

    def run(pod) -> int:
        c = pod.container
        ran.append(c["name"])
        root = where / c["name"]
        shutil.copytree(dest / "steps" / c["image"].rsplit(":", 1)[1] / "mlc", root)
        specs = {v["name"]: v for v in pod.pod["spec"]["volumes"]}
        for m in c["volumeMounts"]:
            inside = root / Path(m["mountPath"]).relative_to("/mlc")
            inside.parent.mkdir(parents=True, exist_ok=True)
            if "emptyDir" not in specs[m["name"]]:
                inside.write_bytes(pod.files[m["mountPath"]])
                continue
            shared = volumes / m["name"]
            shared.mkdir(parents=True, exist_ok=True)
            if "subPath" not in m:
                shutil.rmtree(inside, ignore_errors=True)
                inside.symlink_to(shared, target_is_directory=True)
            elif (shared / m["subPath"]).is_file():
                shutil.copyfile(shared / m["subPath"], inside)
            else:  # a real kubelet would make an empty folder there
                pod.log(f"{m['subPath']} is not in {m['name']}")
                return 1
        proc = subprocess.run(
            [sys.executable, "-c", RUN_STEP, str(root)],
            capture_output=True,
            text=True,
            env={**pod.env, "PATH": os.environ["PATH"]},
            timeout=120,
        )
        pod.log(proc.stdout + proc.stderr)
        return proc.returncode

    return run


def applied(k8s_fake, docs) -> str:
    from kubernetes import client

    api = k8s_fake.api_client()
    try:
        for doc in docs:
            if doc["kind"] == "Secret":
                client.CoreV1Api(api).create_namespaced_secret(NS, doc)
            else:
                client.BatchV1Api(api).create_namespaced_job(NS, doc)
    finally:
        api.close()
    return docs[1]["metadata"]["name"]


def finished(k8s_fake, name, timeout=60.0) -> str:
    def condition():
        job = k8s_fake.get("jobs", name, NS) or {}
        for c in job.get("status", {}).get("conditions") or []:
            if c["type"] in ("Complete", "Failed") and c["status"] == "True":
                return c["type"]
        return None

    found = k8s_fake.wait_for(condition, timeout=timeout)
    assert found, f"job {name} did not finish"
    return found


def test_pipeline_yaml_runs_to_completion_on_the_fake(store, tmp_path, k8s_fake):
    dest, docs = k8s_export(store, tmp_path)
    ran: list = []
    k8s_fake.script("mlc-pipeline", run=kubelet(dest, tmp_path / "node", ran))
    name = applied(k8s_fake, docs)
    assert finished(k8s_fake, name) == "Complete"
    assert ran == ["step-01-ocr", "step-02-detect", "step-03-translate"]
    [pod] = k8s_fake.pods_of(name, NS)
    inits = pod["status"]["initContainerStatuses"]
    assert [(s["name"], s["state"]["terminated"]["reason"]) for s in inits] == [
        ("step-01-ocr", "Completed"),
        ("step-02-detect", "Completed"),
    ]
    assert pod["status"]["phase"] == "Succeeded"
    made = tmp_path / "node" / "volumes" / "values-03-translate" / "v-english.json"
    recorded = store.get("translate")["outputs"]["english"]["digest"]
    assert transfer.file_digest(made) == recorded
    assert made.read_bytes() == b'"BONJOUR LE MONDEfr"'


def test_a_failing_step_fails_the_job_and_the_next_never_run_on_the_fake(store, tmp_path, k8s_fake):
    from kubernetes import client

    dest, docs = k8s_export(store, tmp_path)
    (dest / "steps" / "02-detect" / "mlc" / "cell.py").write_text("raise ValueError('no')\n")
    ran: list = []
    k8s_fake.script("mlc-pipeline", run=kubelet(dest, tmp_path / "node", ran))
    name = applied(k8s_fake, docs)
    assert finished(k8s_fake, name) == "Failed"
    assert ran == ["step-01-ocr", "step-02-detect"]
    [pod] = k8s_fake.pods_of(name, NS)
    assert pod["status"]["phase"] == "Failed"
    first, second = pod["status"]["initContainerStatuses"]
    assert first["state"]["terminated"]["exitCode"] == 0
    assert second["state"]["terminated"]["exitCode"] == 1
    assert pod["status"]["containerStatuses"][0]["state"] == {
        "waiting": {"reason": "PodInitializing"}
    }
    initialized = {c["type"]: c for c in pod["status"]["conditions"]}["Initialized"]
    assert initialized["status"] == "False"
    api = k8s_fake.api_client()
    try:
        core = client.CoreV1Api(api)
        log = core.read_namespaced_pod_log(pod["metadata"]["name"], NS, container="step-02-detect")
        assert "ValueError: no" in log
        with pytest.raises(client.ApiException, match="waiting to start: PodInitializing"):
            core.read_namespaced_pod_log(pod["metadata"]["name"], NS)
    finally:
        api.close()
