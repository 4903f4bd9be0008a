"""Kubernetes objects as plain dicts, and every one valid against the official schemas."""

from __future__ import annotations

import base64
import json
import math
import subprocess
import sys
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from mlcontainer_magics.backends.kubernetes import slugs
from mlcontainer_magics.backends.kubernetes.objects import (
    OLDEST_KUBERNETES,
    K8sSettings,
    job_manifest,
    job_name,
    job_yaml,
    network_policy_manifest,
    owner_reference,
    payload_keys,
    pod_selector,
    run_manifests,
    safe_name,
    secret_manifest,
    to_yaml,
    with_secrets,
)
from mlcontainer_magics.core.spec import EnvSpec, RunSpec
from mlcontainer_magics.errors import SpecError

kubernetes_validate = pytest.importorskip("kubernetes_validate")

# The oldest Kubernetes the objects are made for, and the newest whose schemas
# kubernetes-validate ships: every object must validate strictly against both.
NEWEST_KUBERNETES = kubernetes_validate.utils.major_minor(kubernetes_validate.latest_version())
K8S_VERSIONS = [OLDEST_KUBERNETES, NEWEST_KUBERNETES]
IMAGE = "127.0.0.1:5000/mlc/env@sha256:" + "a" * 64
FILES = {
    "runner.py": b"print('runner')\n",
    "cell.py": b"x = 1\n",
    "manifest.json": b"{}",
    "in/df.pkl": b"\x80\x04N.",
}


def make_spec(**kw) -> RunSpec:
    kw.setdefault("code", "print('hi')\n")
    kw.setdefault("env_spec", EnvSpec("python:3.11-slim", (), ("numpy==1.26.4",)))
    return RunSpec(**kw)


def job(spec=None, *, snapshot_id="20251125-0001", namespace="team-a", settings=None, **kw):
    return job_manifest(
        spec or make_spec(),
        image=IMAGE,
        snapshot_id=snapshot_id,
        namespace=namespace,
        settings=settings or K8sSettings(),
        **kw,
    )


def pod_spec(manifest):
    return manifest["spec"]["template"]["spec"]


def container(manifest):
    (c,) = pod_spec(manifest)["containers"]
    return c


def validate(obj, versions=K8S_VERSIONS):
    for version in [versions] if isinstance(versions, str) else versions:
        kubernetes_validate.validate(obj, version, strict=True)


# -- every object against the official schemas ------------------------------------------------

FULL_SETTINGS = K8sSettings(
    namespace="team-a",
    registry="registry.example.com/ml",
    image_pull_secret="regcred",
    service_account="cell-runner",
    node_selector={"cloud.google.com/gke-accelerator": "t4"},
    tolerations=(
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
        {
            "key": "spot",
            "operator": "Equal",
            "value": "true",
            "effect": "NoExecute",
            "tolerationSeconds": 60,
        },
    ),
    default_cpus=1,
    default_memory=2 * 1024**3,
    ttl_seconds=600,
)

SPECS = {
    "minimal": make_spec(),
    "everything": make_spec(
        name="train_model.v2",
        env=(("A", "1"), ("API_TOKEN", "t0k")),
        cpus=0.25,
        memory=3 * 1024**2 + 5,
        gpus="2",
        network="none",
        timeout=90.5,
        inputs=("df",),
        outputs=("model",),
        session="s-1",
        secret_env=frozenset({"A"}),
    ),
    "long-odd-name": make_spec(name="X" * 64),
}


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("settings", [K8sSettings(), FULL_SETTINGS], ids=["defaults", "full"])
@pytest.mark.parametrize("spec", SPECS.values(), ids=SPECS.keys())
def test_every_object_is_valid_against_the_official_schemas(spec, settings, version):
    objs = run_manifests(
        spec,
        image=IMAGE,
        snapshot_id="20251125-0001-ÄBC",
        namespace="team-a",
        settings=settings,
        files=FILES,
    )
    assert [o["kind"] for o in objs] == (
        ["Secret", "Job", "NetworkPolicy"] if spec.network == "none" else ["Secret", "Job"]
    )
    for obj in objs:
        validate(obj, version)
        # Names must be DNS labels (the schemas do not check formats).
        assert slugs.is_dns_label(obj["metadata"]["name"])
        assert all(slugs.is_label_value(v) for v in obj["metadata"]["labels"].values())


def test_the_validator_catches_what_it_should():
    bad = job()
    bad["spec"]["template"]["spec"]["restartPolicyy"] = "Never"
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(bad)


def test_the_oldest_schema_refuses_fields_that_came_later():
    """Validating against the oldest version is what keeps newer fields out of the objects."""
    assert OLDEST_KUBERNETES in {
        kubernetes_validate.utils.major_minor(v) for v in kubernetes_validate.utils.all_versions()
    }
    assert [int(n) for n in OLDEST_KUBERNETES.split(".")] < [
        int(n) for n in NEWEST_KUBERNETES.split(".")
    ]
    for field, value in [
        ("managedBy", "kueue.x-k8s.io/multikueue"),
        ("successPolicy", {"rules": [{"succeededCount": 1}]}),
    ]:
        newer = job()
        newer["spec"][field] = value  # both came in 1.30
        validate(newer, NEWEST_KUBERNETES)
        with pytest.raises(kubernetes_validate.ValidationError, match=field):
            validate(newer, OLDEST_KUBERNETES)


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_a_rich_run_is_valid_on_the_oldest_and_newest_kubernetes(version):
    """Mounts, secrets, --network none, GPUs, tolerations and a node selector at once."""
    from mlcontainer_magics.core.spec import MountSpec

    spec = make_spec(
        name="train",
        env=(("MODE", "fast"), ("API_TOKEN", "t0k")),
        secrets=("DB_PASSWORD",),
        cpus=2,
        memory=4 * 1024**3,
        gpus="1",
        network="none",
        timeout=600,
        mounts=(
            MountSpec("pvc:training-data/v2", "/work/data"),
            MountSpec("pvc:models", "/work/models", writable=True),
            MountSpec("/home/me/labels.csv", "/work/labels.csv"),
        ),
    )
    spec = with_secrets(spec, {"DB_PASSWORD": "pw"})
    settings = replace(
        FULL_SETTINGS,
        tolerations=(
            *FULL_SETTINGS.tolerations,
            {"operator": "Exists"},
            {
                "key": "node.kubernetes.io/unreachable",
                "operator": "Exists",
                "effect": "NoExecute",
                "tolerationSeconds": 300,
            },
        ),
    )
    objs = run_manifests(
        spec,
        image=IMAGE,
        snapshot_id="20251125-0001",
        namespace="team-a",
        settings=settings,
        files={**FILES, "mnt/work/labels.csv": b"a,b\n"},
    )
    assert [o["kind"] for o in objs] == ["Secret", "Job", "NetworkPolicy"]
    pod = pod_spec(objs[1])
    assert len(pod["tolerations"]) == 4 and pod["nodeSelector"]
    assert container(objs[1])["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert "env.DB_PASSWORD" in objs[0]["data"]
    for obj in objs:
        validate(obj, version)
    # The exported YAML, read back, too.
    yaml = pytest.importorskip("yaml")
    for doc in yaml.safe_load_all(to_yaml(*objs)):
        validate(doc, version)


# -- the Job ----------------------------------------------------------------------------------


def test_job_basics():
    m = job()
    assert m["apiVersion"] == "batch/v1" and m["kind"] == "Job"
    assert m["metadata"]["name"] == "mlc-20251125-0001"
    assert m["metadata"]["namespace"] == "team-a"
    assert m["spec"]["backoffLimit"] == 0
    assert m["spec"]["ttlSecondsAfterFinished"] == 3600
    assert "activeDeadlineSeconds" not in m["spec"]
    assert pod_spec(m)["restartPolicy"] == "Never"
    c = container(m)
    assert c["image"] == IMAGE
    assert c["command"] == ["python", "/mlc/runner.py"]
    assert c["workingDir"] == "/mlc"
    assert c["resources"] == {}


def test_labels_tie_job_and_pod_to_the_snapshot():
    spec = make_spec(name="My_cell", session="kernel-1")
    m = job(spec, snapshot_id="snap-42")
    expected = {
        "app.kubernetes.io/managed-by": "mlcontainer-magics",
        "mlcontainer.org/snapshot": "snap-42",
        "mlcontainer.org/name": "My_cell",
        "mlcontainer.org/session": "kernel-1",
    }
    assert m["metadata"]["labels"] == expected
    assert m["spec"]["template"]["metadata"]["labels"] == expected
    annotations = m["spec"]["template"]["metadata"]["annotations"]
    assert annotations["mlcontainer.org/snapshot-id"] == "snap-42"
    assert annotations["mlcontainer.org/env-key"] == spec.env_spec.key()
    assert pod_selector("snap-42") == (
        "app.kubernetes.io/managed-by=mlcontainer-magics,mlcontainer.org/snapshot=snap-42"
    )


def test_a_snapshot_id_that_is_no_label_value_is_slugged_and_kept_exactly_in_annotations():
    snap = "2025/11/25 run #1"
    m = job(snapshot_id=snap)
    value = m["metadata"]["labels"]["mlcontainer.org/snapshot"]
    assert slugs.is_label_value(value) and value != snap
    assert pod_selector(snap).endswith("=" + value)
    assert m["metadata"]["annotations"]["mlcontainer.org/snapshot-id"] == snap


@pytest.mark.parametrize(
    "cpus, memory, expected",
    [
        (0.5, 512 * 1024**2, {"cpu": "500m", "memory": "512Mi"}),
        (2, 3 * 1024**3, {"cpu": "2", "memory": "3Gi"}),
        (1.25, 1000, {"cpu": "1250m", "memory": "1000"}),
        (0.001, 6 * 1024**2 + 1024, {"cpu": "1m", "memory": "6145Ki"}),
    ],
)
def test_resources_requests_equal_limits(cpus, memory, expected):
    res = container(job(make_spec(cpus=cpus, memory=memory)))["resources"]
    assert res == {"requests": expected, "limits": expected}


def test_resources_fall_back_to_settings_defaults():
    settings = K8sSettings(default_cpus=1.5, default_memory=1024**3)
    assert container(job(settings=settings))["resources"]["limits"] == {
        "cpu": "1500m",
        "memory": "1Gi",
    }
    # The run's own values win.
    res = container(job(make_spec(cpus=4), settings=settings))["resources"]
    assert res["limits"] == {"cpu": "4", "memory": "1Gi"}


def test_gpus_are_counted():
    res = container(job(make_spec(gpus="2")))["resources"]
    assert res["limits"] == {"nvidia.com/gpu": "2"} == res["requests"]


def test_all_gpus_cannot_be_expressed():
    with pytest.raises(SpecError, match=r"--gpus all.*number.*--gpus 1"):
        job(make_spec(gpus="all"))


def test_tiny_cpu_is_refused():
    with pytest.raises(SpecError, match="0.001"):
        job(make_spec(cpus=0.0001))


@pytest.mark.parametrize("timeout, seconds", [(0.2, 1), (10, 10), (10.2, 11), (3600.0, 3600)])
def test_timeout_becomes_active_deadline(timeout, seconds):
    assert (
        job(make_spec(timeout=timeout))["spec"]["activeDeadlineSeconds"]
        == seconds
        == max(1, math.ceil(timeout))
    )


def test_ttl_and_backoff_are_configurable():
    m = job(settings=K8sSettings(ttl_seconds=0, backoff_limit=2))
    assert m["spec"]["ttlSecondsAfterFinished"] == 0 and m["spec"]["backoffLimit"] == 2
    assert "ttlSecondsAfterFinished" not in job(settings=K8sSettings(ttl_seconds=None))["spec"]


def test_security_context_is_restricted():
    m = job()
    assert pod_spec(m)["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 1000,
        "runAsGroup": 1000,
        "fsGroup": 1000,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    sc = container(m)["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["runAsNonRoot"] is True
    assert pod_spec(m)["automountServiceAccountToken"] is False
    assert pod_spec(m)["enableServiceLinks"] is False
    # Each manifest gets its own copy: editing one never changes the next.
    sc["capabilities"]["drop"].append("oops")
    assert container(job())["securityContext"]["capabilities"] == {"drop": ["ALL"]}


def test_placement_settings():
    p = pod_spec(job(settings=FULL_SETTINGS))
    assert p["imagePullSecrets"] == [{"name": "regcred"}]
    assert p["serviceAccountName"] == "cell-runner"
    assert "automountServiceAccountToken" not in p
    assert p["nodeSelector"] == {"cloud.google.com/gke-accelerator": "t4"}
    assert p["tolerations"] == [dict(t) for t in FULL_SETTINGS.tolerations]
    plain = pod_spec(job())
    for key in ("imagePullSecrets", "serviceAccountName", "nodeSelector", "tolerations"):
        assert key not in plain


def test_env_plain_values_inline_secret_values_by_reference():
    spec = make_spec(
        env=(
            ("API_TOKEN", "s3cr3t-token"),
            ("HOME", "/work"),
            ("MODE", "fast"),
            ("PLAIN_BUT_SECRET", "hidden-value"),
        ),
        secret_env=frozenset({"PLAIN_BUT_SECRET"}),
    )
    m = job(spec)
    env = {e["name"]: e for e in container(m)["env"]}
    assert env["MODE"] == {"name": "MODE", "value": "fast"}
    assert env["HOME"] == {"name": "HOME", "value": "/work"}  # the cell's own wins
    assert env["PYTHONUNBUFFERED"]["value"] == "1"
    for key in ("API_TOKEN", "PLAIN_BUT_SECRET"):
        assert env[key] == {
            "name": key,
            "valueFrom": {"secretKeyRef": {"name": m["metadata"]["name"], "key": f"env.{key}"}},
        }
    text = json.dumps(m) + job_yaml(
        spec, image=IMAGE, snapshot_id="s", namespace="team-a", settings=K8sSettings()
    )
    assert "s3cr3t-token" not in text and "hidden-value" not in text


def test_payload_is_mounted_file_by_file_into_a_writable_mlc():
    m = job(files=FILES)
    mounts = container(m)["volumeMounts"]
    assert mounts[:2] == [
        {"name": "mlc", "mountPath": "/mlc"},
        {"name": "out", "mountPath": "/mlc/out"},
    ]
    assert mounts[2:] == [
        {
            "name": "payload",
            "mountPath": "/mlc/runner.py",
            "subPath": "runner.py",
            "readOnly": True,
        },
        {"name": "payload", "mountPath": "/mlc/cell.py", "subPath": "cell.py", "readOnly": True},
        {
            "name": "payload",
            "mountPath": "/mlc/manifest.json",
            "subPath": "manifest.json",
            "readOnly": True,
        },
        {
            "name": "payload",
            "mountPath": "/mlc/in/df.pkl",
            "subPath": "in__df.pkl",
            "readOnly": True,
        },
    ]
    volumes = {v["name"]: v for v in pod_spec(m)["volumes"]}
    assert volumes["mlc"] == {"name": "mlc", "emptyDir": {}}
    assert volumes["payload"]["secret"]["secretName"] == m["metadata"]["name"]
    # Without files: what every run's workdir holds.
    assert [x["mountPath"] for x in container(job())["volumeMounts"][2:]] == [
        "/mlc/runner.py",
        "/mlc/cell.py",
        "/mlc/manifest.json",
    ]


@pytest.mark.parametrize("namespace", ["", "Team", "a_b", "x" * 64])
def test_bad_namespace(namespace):
    with pytest.raises(SpecError, match="namespace"):
        job(namespace=namespace)


def test_bad_image():
    with pytest.raises(SpecError, match="Image reference"):
        job_manifest(make_spec(), image="", snapshot_id="s", namespace="a", settings=K8sSettings())


# -- the Secret -------------------------------------------------------------------------------


def test_secret_holds_payload_and_secret_env_values():
    spec = make_spec(env=(("API_TOKEN", "tok"), ("MODE", "fast")))
    s = secret_manifest(spec, snapshot_id="snap", namespace="team-a", files=FILES)
    assert s["apiVersion"] == "v1" and s["kind"] == "Secret" and s["type"] == "Opaque"
    assert s["immutable"] is True
    assert s["metadata"]["name"] == job(spec, snapshot_id="snap")["metadata"]["name"]
    assert s["metadata"]["labels"]["mlcontainer.org/snapshot"] == "snap"
    data = {k: base64.b64decode(v) for k, v in s["data"].items()}
    assert data == {
        "runner.py": FILES["runner.py"],
        "cell.py": FILES["cell.py"],
        "manifest.json": b"{}",
        "in__df.pkl": FILES["in/df.pkl"],
        "env.API_TOKEN": b"tok",
    }
    assert "ownerReferences" not in s["metadata"]


def test_secret_str_files_are_utf8():
    s = secret_manifest(make_spec(), snapshot_id="s", namespace="a", files={"cell.py": "é"})
    assert base64.b64decode(s["data"]["cell.py"]) == "é".encode()


def test_secret_owned_by_its_job_goes_with_it():
    created = job()
    created["metadata"]["uid"] = "0b5c2a6e-1111-2222-3333-444455556666"
    s = secret_manifest(
        make_spec(), snapshot_id="20251125-0001", namespace="team-a", files=FILES, owner=created
    )
    assert (
        s["metadata"]["ownerReferences"]
        == [owner_reference(created)]
        == [
            {
                "apiVersion": "batch/v1",
                "kind": "Job",
                "name": "mlc-20251125-0001",
                "uid": "0b5c2a6e-1111-2222-3333-444455556666",
                "blockOwnerDeletion": False,
            }
        ]
    )
    validate(s)


def test_payload_up_to_one_mebibyte_fits():
    files = {"runner.py": b"r", "inputs.pkl": b"\0" * (1024**2 - 1)}
    s = secret_manifest(make_spec(), snapshot_id="s", namespace="a", files=files)
    assert sum(len(base64.b64decode(v)) for v in s["data"].values()) == 1024**2


def test_payload_over_one_mebibyte_is_a_clear_error():
    files = {"runner.py": b"r", "inputs.pkl": b"\0" * (3 * 1024**2)}
    with pytest.raises(SpecError) as info:
        secret_manifest(make_spec(), snapshot_id="s", namespace="a", files=files)
    message = str(info.value)
    assert "3.00 MiB" in message and "inputs.pkl" in message and "1 MiB" in message
    # Secret env values count too.
    spec = make_spec(env=(("API_TOKEN", "x" * 1024**2),))
    with pytest.raises(SpecError, match="env.API_TOKEN"):
        secret_manifest(spec, snapshot_id="s", namespace="a", files={"cell.py": b"1"})


def test_payload_keys():
    assert payload_keys(["runner.py", "in/df.pkl", ".keep"]) == {
        "runner.py": "runner.py",
        "in/df.pkl": "in__df.pkl",
        ".keep": ".keep",
    }
    for bad in (["/etc/passwd"], ["../x"], ["a//b"], ["a b"], ["env.X"], ["a/./b"], [""]):
        with pytest.raises(ValueError, match="not usable"):
            payload_keys(bad)
    with pytest.raises(ValueError, match="collide"):
        payload_keys(["a/b", "a__b"])


# -- network and export -----------------------------------------------------------------------


def test_network_none_denies_all_traffic_of_the_runs_pod():
    spec = make_spec(network="none")
    p = network_policy_manifest(spec, snapshot_id="snap", namespace="team-a")
    assert p["spec"]["policyTypes"] == ["Ingress", "Egress"]
    assert "ingress" not in p["spec"] and "egress" not in p["spec"]
    pod_labels = job(spec, snapshot_id="snap")["spec"]["template"]["metadata"]["labels"]
    assert p["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()


def test_job_yaml_round_trips():
    yaml = pytest.importorskip("yaml")
    spec = make_spec(name="cell", cpus=1, timeout=5)
    text = job_yaml(spec, image=IMAGE, snapshot_id="s", namespace="team-a", settings=K8sSettings())
    assert text.startswith("apiVersion: batch/v1\nkind: Job\n")
    assert yaml.safe_load(text) == job(spec, snapshot_id="s")


def test_yaml_without_pyyaml_is_json(monkeypatch):
    monkeypatch.setitem(sys.modules, "yaml", None)  # import yaml now raises ImportError
    a, b = job(), secret_manifest(make_spec(), snapshot_id="s", namespace="a", files=FILES)
    docs = to_yaml(a, b).split("---\n")
    assert [json.loads(d) for d in docs] == [a, b]


# -- settings ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"namespace": "Team_A"}, "namespace"),
        ({"image_pull_secret": "Reg Cred"}, "image_pull_secret"),
        ({"service_account": "-x"}, "service_account"),
        ({"node_selector": {"bad key!": "x"}}, "node_selector"),
        ({"node_selector": {"gpu": "not valid!"}}, "node_selector"),
        ({"tolerations": ({"key": "a", "operater": "Exists"},)}, "Toleration"),
        ({"tolerations": ({"key": "a", "operator": "Sometimes"},)}, "operator"),
        ({"tolerations": ({"key": "a", "effect": "NoWay"},)}, "effect"),
        ({"ttl_seconds": -1}, "ttl_seconds"),
        ({"ttl_seconds": 1.5}, "ttl_seconds"),
        ({"backoff_limit": None}, "backoff_limit"),
        ({"default_cpus": 0}, "default_cpus"),
        ({"default_memory": "2g"}, "default_memory"),
    ],
)
def test_settings_are_validated(kwargs, match):
    with pytest.raises(SpecError, match=match):
        K8sSettings(**kwargs)


# What the API server refuses (ValidateTolerations in pkg/apis/core/validation), each with
# what the message tells to write instead.
BAD_TOLERATIONS = {
    "value-under-exists": (
        {"key": "gpu", "operator": "Exists", "value": "true"},
        r"operator Exists .* takes no value\. Drop value 'true', or write operator: Equal",
    ),
    "seconds-without-effect": (
        {"key": "spot", "value": "true", "tolerationSeconds": 60},
        r"tolerationSeconds .* only to effect NoExecute\. Write effect: NoExecute, or drop",
    ),
    "seconds-with-noschedule": (
        {"key": "spot", "operator": "Exists", "effect": "NoSchedule", "tolerationSeconds": 60},
        r"only to effect NoExecute\. Write effect: NoExecute, or drop tolerationSeconds",
    ),
    "no-key-equal": (
        {"operator": "Equal", "value": "x"},
        r"without a key, only operator Exists .* Give the taint's key, or write operator: Exists",
    ),
    "no-key-default-operator": ({"effect": "NoSchedule"}, r"without a key.*operator: Exists"),
    "bad-key": (
        {"key": "bad key!", "operator": "Exists"},
        r"'bad key!' is not a taint key\. Use the taint's key, such as 'nvidia\.com/gpu'",
    ),
    "bad-key-prefix": ({"key": "Example_Com/spot", "operator": "Exists"}, "not a taint key"),
    "key-not-a-string": ({"key": 5, "operator": "Exists"}, "not a taint key"),
    "bad-value": (
        {"key": "spot", "value": "not valid!"},
        r"'not valid!' cannot be a taint value\. Use up to 63 .* or write operator: Exists",
    ),
    "long-value": ({"key": "spot", "operator": "Equal", "value": "x" * 64}, "taint value"),
    "value-not-a-string": ({"key": "spot", "value": True}, "value must be a string"),
    "seconds-not-a-number": (
        {"key": "k", "effect": "NoExecute", "tolerationSeconds": "60"},
        "tolerationSeconds must be a whole number",
    ),
    "seconds-a-bool": (
        {"key": "k", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": True},
        "whole number",
    ),
}
GOOD_TOLERATIONS = {
    "everything": {"operator": "Exists"},
    "exists": {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
    "exists-empty-value": {"key": "gpu", "operator": "Exists", "value": ""},
    "default-equal": {"key": "spot", "value": "true"},
    "equal-empty-value": {"key": "spot", "operator": "Equal", "value": ""},
    "no-execute-for-a-while": {
        "key": "node.kubernetes.io/unreachable",
        "operator": "Exists",
        "effect": "NoExecute",
        "tolerationSeconds": 300,
    },
    "equal-no-execute": {
        "key": "example.com/spot",
        "operator": "Equal",
        "value": "true",
        "effect": "NoExecute",
        "tolerationSeconds": 0,
    },
}


@pytest.mark.parametrize("toleration, match", BAD_TOLERATIONS.values(), ids=BAD_TOLERATIONS.keys())
def test_tolerations_the_api_server_refuses_are_refused_with_the_fix(toleration, match):
    with pytest.raises(SpecError, match=match) as info:
        K8sSettings(tolerations=(toleration,))
    assert str(info.value).startswith(f"Toleration {toleration!r}: ")


@pytest.mark.parametrize("toleration", GOOD_TOLERATIONS.values(), ids=GOOD_TOLERATIONS.keys())
def test_tolerations_the_api_server_takes_pass_as_written(toleration):
    settings = K8sSettings(tolerations=(toleration,))
    assert settings.tolerations == (toleration,)
    m = job(settings=settings)
    assert pod_spec(m)["tolerations"] == [toleration]
    validate(m)


def test_settings_are_frozen_and_copy_their_mappings():
    selector = {"pool": "gpu"}
    s = K8sSettings(node_selector=selector, tolerations=[{"key": "k", "operator": "Exists"}])
    selector["pool"] = "changed"
    assert s.node_selector == {"pool": "gpu"}
    assert isinstance(s.tolerations, tuple)
    with pytest.raises(AttributeError):
        s.namespace = "other"


def test_k8s_package_is_pure():
    code = (
        "import sys, mlcontainer_magics.backends.kubernetes.objects; "
        "bad = [m for m in ('kubernetes', 'docker', 'yaml', 'requests') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


# -- names ------------------------------------------------------------------------------------


def test_job_name():
    assert job_name("abc123") == "mlc-abc123"
    assert job_name("abc123", "train") == "mlc-train-abc123"
    long = job_name("abc123", "n" * 64)
    assert len(long) <= 63 and slugs.is_dns_label(long) and long.startswith("mlc-nnn")
    assert job_name("abc123", "Train") != job_name("abc123", "train")


KINDS = {
    "dns-label": slugs.is_dns_label,
    "dns-subdomain": slugs.is_dns_subdomain,
    "label-value": slugs.is_label_value,
}


@pytest.mark.parametrize("kind", KINDS)
@hsettings(max_examples=300, deadline=None)
@given(name=st.text(max_size=300))
def test_safe_name_is_always_valid(kind, name):
    assert KINDS[kind](safe_name(name, kind))


@pytest.mark.parametrize("kind", KINDS)
@given(a=st.text(max_size=80), b=st.text(max_size=80))
def test_safe_name_does_not_collide(kind, a, b):
    if a != b:
        assert safe_name(a, kind) != safe_name(b, kind)


@pytest.mark.parametrize(
    "name, kind, expected",
    [
        ("abc-123", "dns-label", "abc-123"),
        ("a.b.c", "dns-subdomain", "a.b.c"),
        ("My_Cell.1", "label-value", "My_Cell.1"),
        ("", "label-value", ""),
    ],
)
def test_valid_names_are_kept(name, kind, expected):
    assert safe_name(name, kind) == expected


@pytest.mark.parametrize(
    "name, kind, prefix",
    [
        ("My Cell", "dns-label", "my-cell---"),
        ("a--b", "dns-label", "a-b---"),  # '--' is reserved for hashed names
        ("x" * 64, "dns-label", "x" * 52 + "---"),
        ("a..b", "dns-subdomain", "a.b---"),
        ("-lead", "label-value", "lead---"),
        ("", "dns-label", "x---"),
    ],
)
def test_changed_or_truncated_names_get_a_hash(name, kind, prefix):
    out = safe_name(name, kind)
    assert out.startswith(prefix) and out.endswith(slugs.short_hash(name))


def test_safe_name_max_length():
    out = safe_name("abcdefghijklmnopqrstuvwxyz", max_length=20)
    assert len(out) == 20 and out == "abcdefghi---" + slugs.short_hash("abcdefghijklmnopqrstuvwxyz")
    with pytest.raises(ValueError):
        safe_name("x", max_length=11)
    with pytest.raises(ValueError):
        safe_name("x", "dns-name")


def test_mounts_become_claims_and_files_of_the_payload_and_stay_valid():
    from mlcontainer_magics.core.spec import MountSpec

    spec = make_spec(
        mounts=(
            MountSpec("pvc:training-data/v2", "/work/data"),
            MountSpec("pvc:models", "/work/models", writable=True),
            MountSpec("/home/me/labels.csv", "/work/labels.csv"),
        )
    )
    files = {**FILES, "mnt/work/labels.csv": b"a,b\n"}
    objs = run_manifests(
        spec,
        image=IMAGE,
        snapshot_id="s1",
        namespace="team-a",
        settings=K8sSettings(),
        files=files,
    )
    for version in K8S_VERSIONS:
        for obj in objs:
            kubernetes_validate.validate(obj, version, strict=True)
    pod = objs[1]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["workingDir"] == "/work"
    claims = {
        v["persistentVolumeClaim"]["claimName"]: v
        for v in pod["volumes"]
        if "persistentVolumeClaim" in v
    }
    assert claims["training-data"]["persistentVolumeClaim"]["readOnly"] is True
    assert claims["models"]["persistentVolumeClaim"]["readOnly"] is False
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts["/work/data"]["subPath"] == "v2" and mounts["/work/data"]["readOnly"]
    assert not mounts["/work/models"]["readOnly"] and "subPath" not in mounts["/work/models"]
    assert mounts["/work/labels.csv"]["subPath"] == "mnt__work__labels.csv"
    assert mounts["/mlc/cell.py"]["subPath"] == "cell.py"  # the run's own files as before
    with pytest.raises(SpecError, match="not a PersistentVolumeClaim name"):
        job(make_spec(mounts=(MountSpec("pvc:Bad_Name", "/work/x"),)))
