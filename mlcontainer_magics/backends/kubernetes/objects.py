"""Kubernetes objects for one containerized run, made by pure functions as plain dicts.

Standard library only (PyYAML optionally, for :func:`to_yaml`). Nothing here talks to a cluster:
the backend sends these dicts with the official client, and tests assert on them as dicts and
validate them against the official OpenAPI schemas.

One run is:

* a ``v1`` **Secret** holding the payload — the files of the run's workdir, which the Docker
  backend mounts as ``/mlc`` (``runner.py``, ``cell.py``, ``manifest.json``, ``in/...``; the
  backend reads them into a dict) — and the values of secret environment variables, so that
  code and inputs reach the pod without a shared filesystem.
* a ``batch/v1`` **Job** with one pod, ``restartPolicy: Never`` and ``backoffLimit: 0``, whose
  Job and pod carry labels tying them to the run's snapshot. As in the Docker backend, ``/mlc``
  is the working directory and writable (an emptyDir), each payload file is mounted into it
  read-only from the Secret (``subPath``), ``/mlc/out`` is an emptyDir for the files the cell
  leaves, and the container runs ``python /mlc/runner.py``.
* for ``--network none``, a ``networking.k8s.io/v1`` **NetworkPolicy** denying all traffic to
  and from the pod (enforced only where the cluster's network plugin enforces policies).

The Job and the Secret share one name, made by :func:`job_name`.
"""

from __future__ import annotations

import base64
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from ...config import DEFAULT_TTL_SECONDS
from ...core.spec import MountSpec, RunSpec, looks_secret, parse_memory
from ...errors import SpecError
from ...runner import CONTAINER_ENV, MLC_DIR, WORK_DIR
from .slugs import is_dns_label, is_dns_subdomain, is_label_value, safe_name

MANAGED_BY = "mlcontainer-magics"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_SNAPSHOT = "mlcontainer.org/snapshot"
LABEL_NAME = "mlcontainer.org/name"
LABEL_SESSION = "mlcontainer.org/session"
# Label values are slugs; the annotations keep the exact strings.
ANNOTATION_SNAPSHOT = "mlcontainer.org/snapshot-id"
ANNOTATION_NAME = "mlcontainer.org/name"
ANNOTATION_ENV_KEY = "mlcontainer.org/env-key"

CONTAINER_NAME = "cell"
PAYLOAD_VOLUME = "payload"
WORK_VOLUME = "mlc"
OUT_VOLUME = "out"
OUT_DIR = f"{MLC_DIR}/out"
RUNNER_PATH = f"{MLC_DIR}/runner.py"
# What every run's workdir holds (runs.prepare_workdir); mounted when not told otherwise.
DEFAULT_FILES = ("runner.py", "cell.py", "manifest.json")
ENV_KEY_PREFIX = "env."
RUN_AS_USER = 1000
GPU_RESOURCE = "nvidia.com/gpu"
# The API server refuses a Secret whose data adds up to more than 1 MiB.
SECRET_MAX_BYTES = 1024 * 1024
# The oldest Kubernetes (minor version) the objects are made for: they use only fields its API
# has (no Job managedBy or successPolicy, which came in 1.30; nor podReplacementPolicy; a map's
# backoffLimitPerIndex, beta in 1.29, only where the cluster says it is that new: indexed.py),
# and the tests validate them strictly against its schema and the newest one
# kubernetes-validate ships.
OLDEST_KUBERNETES = "1.29"

_SECRET_KEY_RE = re.compile(r"^[-._a-zA-Z0-9]+$")
_LABEL_NAME_RE = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_TOLERATION_KEYS = {"key", "operator", "value", "effect", "tolerationSeconds"}
_TOLERATION_OPERATORS = ("Exists", "Equal")
_TAINT_EFFECTS = ("", "NoSchedule", "PreferNoSchedule", "NoExecute")


@dataclass(frozen=True)
class K8sSettings:
    """Where and how runs are placed on a cluster; validated on construction (SpecError)."""

    namespace: str = "default"
    context: str | None = None  # kubeconfig context; None: the current one
    in_cluster: bool = False  # use the pod's service account instead of a kubeconfig
    registry: str | None = None  # host[:port][/prefix] that environment images go to
    image_pull_secret: str | None = None
    service_account: str | None = None
    node_selector: Mapping[str, str] = field(default_factory=dict)
    tolerations: tuple[Mapping, ...] = ()
    default_cpus: float | None = None  # used when a run gives no --cpus
    default_memory: int | None = None  # bytes; used when a run gives no --memory
    ttl_seconds: int | None = DEFAULT_TTL_SECONDS  # finished Jobs are deleted after this
    backoff_limit: int = 0  # retries of a failed pod; 0: a cell runs once

    def __post_init__(self) -> None:
        if not is_dns_label(self.namespace):
            raise SpecError(
                f"Kubernetes namespace {self.namespace!r} is not a valid name: use "
                "up to 63 lowercase letters, digits and '-'."
            )
        for what, value in (
            ("image_pull_secret", self.image_pull_secret),
            ("service_account", self.service_account),
        ):
            if value is not None and not is_dns_subdomain(value):
                raise SpecError(
                    f"Kubernetes {what} {value!r} is not a valid object name: use "
                    "lowercase letters, digits, '-' and '.'."
                )
        selector = dict(self.node_selector or {})
        for key, value in selector.items():
            if not (_is_label_key(key) and isinstance(value, str) and is_label_value(value)):
                raise SpecError(f"node_selector {key}={value!r} is not a valid Kubernetes label.")
        object.__setattr__(self, "node_selector", selector)
        object.__setattr__(
            self, "tolerations", tuple(_check_toleration(t) for t in self.tolerations or ())
        )
        for what, count in (
            ("ttl_seconds", self.ttl_seconds),
            ("backoff_limit", self.backoff_limit),
        ):
            if count is not None and (
                not isinstance(count, int) or isinstance(count, bool) or count < 0
            ):
                raise SpecError(f"{what} must be a whole number of 0 or more, not {count!r}.")
        if self.backoff_limit is None:
            raise SpecError("backoff_limit must be a whole number of 0 or more, not None.")
        if self.default_cpus is not None and not self.default_cpus > 0:
            raise SpecError(f"default_cpus must be positive, not {self.default_cpus!r}.")
        if self.default_memory is not None and not (
            isinstance(self.default_memory, int) and self.default_memory > 0
        ):
            raise SpecError(
                f"default_memory must be a positive number of bytes, not {self.default_memory!r}."
            )


def settings_from(config, namespace: str) -> K8sSettings:
    """The placement settings of a KubernetesConfig for runs in ``namespace``; SpecError
    when one is invalid."""
    memory = config.default_memory
    return K8sSettings(
        namespace=namespace,
        context=config.context or None,
        in_cluster=config.in_cluster,
        registry=config.registry or None,
        image_pull_secret=config.image_pull_secret or None,
        service_account=config.service_account or None,
        node_selector=dict(config.node_selector),
        tolerations=tuple(config.tolerations),
        default_cpus=config.default_cpus,
        default_memory=parse_memory(memory) if memory else None,
        ttl_seconds=config.ttl_seconds,
    )


def _is_label_key(key) -> bool:
    if not isinstance(key, str):
        return False
    prefix, slash, name = key.rpartition("/")
    if slash and not (prefix and is_dns_subdomain(prefix)):
        return False
    return len(name) <= 63 and bool(_LABEL_NAME_RE.match(name))


def _check_toleration(t) -> dict:
    """A toleration as the API server accepts it (pkg/apis/core/validation, ValidateTolerations),
    else SpecError saying what to write instead."""
    if not isinstance(t, Mapping) or set(t) - _TOLERATION_KEYS:
        raise SpecError(
            f"Toleration {t!r}: use a mapping with keys among "
            f"{', '.join(sorted(_TOLERATION_KEYS))}."
        )
    t = dict(t)
    key = t.get("key", "")
    operator = t.get("operator", "Equal")
    value = t.get("value", "")
    effect = t.get("effect", "")
    seconds = t.get("tolerationSeconds")
    if not isinstance(key, str) or (key and not _is_label_key(key)):
        raise SpecError(
            f"Toleration {t!r}: key {key!r} is not a taint key. Use the taint's key, such as "
            "'nvidia.com/gpu' or 'spot' (an optional DNS-subdomain prefix and '/', then up to "
            "63 letters, digits, '-', '_' and '.'), or leave key out with operator Exists to "
            "tolerate every taint."
        )
    if operator not in _TOLERATION_OPERATORS:
        raise SpecError(f"Toleration {t!r}: operator must be Exists or Equal.")
    if not key and operator != "Exists":
        raise SpecError(
            f"Toleration {t!r}: without a key, only operator Exists is allowed (it tolerates "
            "every taint). Give the taint's key, or write operator: Exists."
        )
    if not isinstance(value, str):
        raise SpecError(f"Toleration {t!r}: value must be a string, such as 'true'.")
    if operator == "Exists" and value:
        raise SpecError(
            f"Toleration {t!r}: operator Exists matches any value of the key, so it takes no "
            f"value. Drop value {value!r}, or write operator: Equal to match only that value."
        )
    if operator == "Equal" and not is_label_value(value):
        raise SpecError(
            f"Toleration {t!r}: value {value!r} cannot be a taint value. Use up to 63 letters, "
            "digits, '-', '_' and '.', beginning and ending with a letter or digit, or write "
            "operator: Exists (without a value) to match any value."
        )
    if effect not in _TAINT_EFFECTS:
        raise SpecError(
            f"Toleration {t!r}: effect must be one of NoSchedule, PreferNoSchedule, NoExecute."
        )
    if seconds is not None:
        if not isinstance(seconds, int) or isinstance(seconds, bool):
            raise SpecError(
                f"Toleration {t!r}: tolerationSeconds must be a whole number of seconds, "
                f"not {seconds!r}."
            )
        if effect != "NoExecute":
            raise SpecError(
                f"Toleration {t!r}: tolerationSeconds (how long a running pod stays on a node "
                "newly tainted) applies only to effect NoExecute. Write effect: NoExecute, or "
                "drop tolerationSeconds."
            )
    return t


# -- names and labels ---------------------------------------------------------------------------


def job_name(snapshot_id: str, name: str | None = None) -> str:
    """The name of a run's Job and Secret: ``mlc-[<name>-]<snapshot>``, DNS-label safe."""
    return safe_name("-".join(["mlc", *([name] if name else []), snapshot_id]))


secret_name = job_name


def labels(spec: RunSpec, snapshot_id: str) -> dict[str, str]:
    out = {LABEL_MANAGED_BY: MANAGED_BY, LABEL_SNAPSHOT: safe_name(snapshot_id, "label-value")}
    if spec.name:
        out[LABEL_NAME] = safe_name(spec.name, "label-value")
    if spec.session:
        out[LABEL_SESSION] = safe_name(spec.session, "label-value")
    return out


def pod_selector(snapshot_id: str) -> str:
    """A label selector (query-string form) matching the pods of one run."""
    return (
        f"{LABEL_MANAGED_BY}={MANAGED_BY},{LABEL_SNAPSHOT}={safe_name(snapshot_id, 'label-value')}"
    )


def _annotations(spec: RunSpec, snapshot_id: str) -> dict[str, str]:
    out = {ANNOTATION_SNAPSHOT: snapshot_id, ANNOTATION_ENV_KEY: spec.env_spec.key()}
    if spec.name:
        out[ANNOTATION_NAME] = spec.name
    return out


# -- resources ------------------------------------------------------------------------------


def cpu_quantity(cpus: float) -> str:
    """0.5 -> '500m', 2 -> '2'."""
    millis = round(cpus * 1000)
    if millis < 1:
        raise SpecError(f"--cpus {cpus!r} is below Kubernetes' smallest unit of 0.001 CPU.")
    return str(millis // 1000) if millis % 1000 == 0 else f"{millis}m"


def memory_quantity(nbytes: int) -> str:
    """Bytes as a Kubernetes quantity, in the largest binary unit that divides it exactly."""
    for suffix, factor in (("Gi", 1024**3), ("Mi", 1024**2), ("Ki", 1024)):
        if nbytes % factor == 0:
            return f"{nbytes // factor}{suffix}"
    return str(nbytes)


def resources(spec: RunSpec, settings: K8sSettings) -> dict:
    """Requests equal to limits (as ``docker run --cpus/--memory`` limits), from the run or the
    settings' defaults; GPUs as ``nvidia.com/gpu``, which Kubernetes only counts."""
    amounts: dict[str, str] = {}
    cpus = spec.cpus if spec.cpus is not None else settings.default_cpus
    memory = spec.memory if spec.memory is not None else settings.default_memory
    if cpus is not None:
        amounts["cpu"] = cpu_quantity(cpus)
    if memory is not None:
        amounts["memory"] = memory_quantity(memory)
    if spec.gpus is not None:
        if not str(spec.gpus).isdigit() or int(spec.gpus) < 1:
            raise SpecError(
                f"--gpus {spec.gpus}: Kubernetes schedules a number of GPUs, not "
                "'all' of a node's; ask for a number, such as --gpus 1."
            )
        amounts[GPU_RESOURCE] = str(int(spec.gpus))
    if not amounts:
        return {}
    return {"requests": dict(amounts), "limits": dict(amounts)}


# -- environment ------------------------------------------------------------------------------


def with_secrets(spec: RunSpec, values: Mapping[str, str]) -> RunSpec:
    """The spec as the cluster gets it: each --secret a variable of the run's Secret, referenced
    by the Job (its value never in the Job, and the Secret goes with the run). Without
    ``values`` (an export), the variables are there with empty values, to fill in."""
    names = tuple(spec.secrets)
    env = tuple((k, v) for k, v in spec.env if k not in names)
    env += tuple((name, values.get(name, "")) for name in names)
    return replace(spec, env=env, secret_env=spec.secret_env | set(names))


def secret_env_keys(spec: RunSpec) -> list[str]:
    """The variables whose values go into the Secret rather than the Job (as masked_env)."""
    return [k for k, _ in spec.env if k in spec.secret_env or looks_secret(k)]


def container_env(spec: RunSpec, secret: str) -> list[dict]:
    """Plain values inline; secret values by reference to the run's Secret. A variable of the
    cell's own wins over the defaults."""
    secrets = set(secret_env_keys(spec))
    env: dict[str, dict] = {k: {"name": k, "value": v} for k, v in CONTAINER_ENV.items()}
    for key, value in spec.env:
        if key in secrets:
            env[key] = {
                "name": key,
                "valueFrom": {"secretKeyRef": {"name": secret, "key": ENV_KEY_PREFIX + key}},
            }
        else:
            env[key] = {"name": key, "value": value}
    return list(env.values())


# -- payload files ----------------------------------------------------------------------------


# Payload paths under this prefix are files of a --mount, mounted at their path in the
# container ("mnt/work/data/x.csv" at /work/data/x.csv); the others go under /mlc.
MOUNTED_PREFIX = "mnt/"
CLAIM_PREFIX = "pvc:"  # a mount's source naming a PersistentVolumeClaim: pvc:NAME[/sub/path]


def payload_mount_path(path: str) -> str:
    if path.startswith(MOUNTED_PREFIX):
        return "/" + path[len(MOUNTED_PREFIX) :]
    return f"{MLC_DIR}/{path}"


def claim_mounts(spec: RunSpec) -> list[tuple[str, MountSpec, str, str]]:
    """(volume name, mount, claim, sub path) of each mount backed by a PersistentVolumeClaim."""
    out = []
    for i, mount in enumerate(m for m in spec.mounts if m.source.startswith(CLAIM_PREFIX)):
        claim, _, sub = mount.source[len(CLAIM_PREFIX) :].partition("/")
        if not is_dns_subdomain(claim):
            raise SpecError(
                f"--mount {mount.target}: {claim!r} is not a PersistentVolumeClaim name; "
                "KubernetesConfig.volumes maps a mount to pvc:NAME[/sub/path]."
            )
        out.append((f"claim-{i}", mount, claim, sub.strip("/")))
    return out


def payload_keys(paths) -> dict[str, str]:
    """Map payload paths (relative to /mlc, '/' allowed) to Secret keys ('/' becomes '__').

    Raises ValueError for a path that is absolute, climbs out, or cannot be a key.
    """
    keys: dict[str, str] = {}
    for path in paths:
        parts = path.split("/")
        key = "__".join(parts)
        if (
            path.startswith("/")
            or any(p in ("", ".", "..") for p in parts)
            or not _SECRET_KEY_RE.match(key)
            or len(key) > 253
            or key.startswith(ENV_KEY_PREFIX)
        ):
            raise ValueError(
                f"Payload path {path!r} is not usable: use a relative path of "
                "letters, digits, '-', '_' and '.', not starting with "
                f"'{ENV_KEY_PREFIX}'."
            )
        if key in keys.values():
            raise ValueError(
                f"Payload paths {path!r} and "
                f"{next(p for p, k in keys.items() if k == key)!r} collide."
            )
        keys[path] = key
    return keys


# -- objects ----------------------------------------------------------------------------------

POD_SECURITY_CONTEXT = {
    "runAsNonRoot": True,
    "runAsUser": RUN_AS_USER,
    "runAsGroup": RUN_AS_USER,
    "fsGroup": RUN_AS_USER,
    "seccompProfile": {"type": "RuntimeDefault"},
}
CONTAINER_SECURITY_CONTEXT = {
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "runAsNonRoot": True,
    "runAsUser": RUN_AS_USER,
}


def _check_namespace(namespace: str) -> None:
    if not is_dns_label(namespace or ""):
        raise SpecError(
            f"Kubernetes namespace {namespace!r} is not a valid name: use up to 63 "
            "lowercase letters, digits and '-'."
        )


def job_manifest(
    spec: RunSpec,
    *,
    image: str,
    snapshot_id: str,
    namespace: str,
    settings: K8sSettings,
    files=DEFAULT_FILES,
) -> dict:
    """The ``batch/v1`` Job that runs ``spec`` once in ``image``.

    ``files`` are the payload's paths (the keys of what :func:`secret_manifest` got); each is
    mounted from the Secret at ``/mlc/<path>``.
    Raises SpecError for what Kubernetes cannot express (``--gpus all``).
    """
    _check_namespace(namespace)
    if not image or any(c.isspace() for c in image):
        raise SpecError(f"Image reference {image!r} is empty or contains whitespace.")
    name = job_name(snapshot_id, spec.name)
    run_labels = labels(spec, snapshot_id)
    annotations = _annotations(spec, snapshot_id)
    claims = claim_mounts(spec)
    pod_spec = _pod_spec(
        "Never",
        _container(spec, name, image, settings, files, claims),
        _volumes(name, claims),
        settings,
    )

    job_spec: dict = {"backoffLimit": settings.backoff_limit}
    if spec.timeout is not None:
        # Counted from the Job's start, so it includes scheduling and the image pull.
        job_spec["activeDeadlineSeconds"] = max(1, math.ceil(spec.timeout))
    if settings.ttl_seconds is not None:
        job_spec["ttlSecondsAfterFinished"] = settings.ttl_seconds
    job_spec["template"] = {
        "metadata": {"labels": dict(run_labels), "annotations": dict(annotations)},
        "spec": pod_spec,
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": run_labels,
            "annotations": annotations,
        },
        "spec": job_spec,
    }


def _pod_spec(restart: str, container: dict, volumes: list, settings: K8sSettings) -> dict:
    """A pod of one container, placed and restricted as the settings say (Jobs and
    Deployments alike)."""
    pod_spec: dict = {
        "restartPolicy": restart,
        "containers": [container],
        "volumes": volumes,
        "securityContext": _copy(POD_SECURITY_CONTEXT),
        "enableServiceLinks": False,
    }
    if settings.service_account:
        pod_spec["serviceAccountName"] = settings.service_account
    else:  # the cell has no business with the cluster's API
        pod_spec["automountServiceAccountToken"] = False
    if settings.image_pull_secret:
        pod_spec["imagePullSecrets"] = [{"name": settings.image_pull_secret}]
    if settings.node_selector:
        pod_spec["nodeSelector"] = dict(settings.node_selector)
    if settings.tolerations:
        pod_spec["tolerations"] = [dict(t) for t in settings.tolerations]
    return pod_spec


def _container(spec: RunSpec, name: str, image: str, settings: K8sSettings, files, claims) -> dict:
    """The run's one container: the runner, the run's files from the Secret, the mounts."""
    return {
        "name": CONTAINER_NAME,
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["python", RUNNER_PATH],
        "workingDir": WORK_DIR if spec.mounts else MLC_DIR,
        "env": container_env(spec, name),
        "resources": resources(spec, settings),
        "securityContext": _copy(CONTAINER_SECURITY_CONTEXT),
        "volumeMounts": [
            {"name": WORK_VOLUME, "mountPath": MLC_DIR},
            {"name": OUT_VOLUME, "mountPath": OUT_DIR},
            *(
                {
                    "name": PAYLOAD_VOLUME,
                    "mountPath": payload_mount_path(path),
                    "subPath": key,
                    "readOnly": True,
                }
                for path, key in payload_keys(files).items()
            ),
            *(
                {
                    "name": volume,
                    "mountPath": mount.target,
                    "readOnly": not mount.writable,
                    **({"subPath": sub} if sub else {}),
                }
                for volume, mount, claim, sub in claims
            ),
        ],
    }


def _volumes(name: str, claims) -> list[dict]:
    return [
        {"name": WORK_VOLUME, "emptyDir": {}},
        {"name": OUT_VOLUME, "emptyDir": {}},
        # Readable by the run's group only (fsGroup), like a 0640 file of the user's.
        {"name": PAYLOAD_VOLUME, "secret": {"secretName": name, "defaultMode": 0o440}},
        *(
            {
                "name": volume,
                "persistentVolumeClaim": {"claimName": claim, "readOnly": not mount.writable},
            }
            for volume, mount, claim, sub in claims
        ),
    ]


TOO_LARGE_ADVICE = (
    "Pass fewer or smaller --inputs (load large data inside the cell from storage the cluster "
    "can reach), or run with the Docker backend."
)


def secret_manifest(
    spec: RunSpec,
    *,
    snapshot_id: str,
    namespace: str,
    files: Mapping[str, bytes | str],
    owner: Mapping | None = None,
    advice: str = TOO_LARGE_ADVICE,
) -> dict:
    """The ``v1`` Secret of a run: the payload ``files`` (path relative to /mlc -> content:
    the run's workdir without ``out/``; keys from :func:`payload_keys`) and ``env.<KEY>`` for
    each secret variable.

    ``owner``, a created Job as returned by the API (it needs ``metadata.uid``), makes the
    Secret go when the Job goes (deleted, or expired by its TTL).
    Raises SpecError when the payload is over Kubernetes' 1 MiB limit, ending with ``advice``.
    """
    _check_namespace(namespace)
    payload: dict[str, bytes] = {}
    for path, key in payload_keys(files).items():
        value = files[path]
        payload[key] = value.encode("utf-8") if isinstance(value, str) else bytes(value)
    env = dict(spec.env)
    for key in secret_env_keys(spec):
        payload[ENV_KEY_PREFIX + key] = env[key].encode("utf-8")
    total = sum(len(v) for v in payload.values())
    if total > SECRET_MAX_BYTES:
        sizes = ", ".join(
            f"{k} {_size(len(v))}"
            for k, v in sorted(payload.items(), key=lambda kv: -len(kv[1]))[:3]
        )
        raise SpecError(
            f"The run's code and inputs add up to {_size(total)} ({sizes}), over the 1 MiB "
            f"Kubernetes allows in a Secret. {advice}"
        )
    name = secret_name(snapshot_id, spec.name)
    metadata: dict = {
        "name": name,
        "namespace": namespace,
        "labels": labels(spec, snapshot_id),
        "annotations": _annotations(spec, snapshot_id),
    }
    if owner is not None:
        metadata["ownerReferences"] = [owner_reference(owner)]
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": metadata,
        "type": "Opaque",
        "immutable": True,
        "data": {k: base64.b64encode(v).decode("ascii") for k, v in payload.items()},
    }


def owner_reference(obj: Mapping) -> dict:
    """An ownerReference to ``obj`` (a created object: it has a uid), for garbage collection."""
    meta = obj["metadata"]
    return {
        "apiVersion": obj.get("apiVersion", "batch/v1"),
        "kind": obj.get("kind", "Job"),
        "name": meta["name"],
        "uid": meta["uid"],
        "blockOwnerDeletion": False,
    }


def network_policy_manifest(spec: RunSpec, *, snapshot_id: str, namespace: str) -> dict:
    """Deny all ingress and egress of the run's pod (``--network none``).

    Only clusters whose network plugin enforces NetworkPolicy honour it.
    """
    _check_namespace(namespace)
    run_labels = labels(spec, snapshot_id)
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {
            "name": job_name(snapshot_id, spec.name),
            "namespace": namespace,
            "labels": dict(run_labels),
        },
        "spec": {
            "podSelector": {
                "matchLabels": {k: run_labels[k] for k in (LABEL_MANAGED_BY, LABEL_SNAPSHOT)}
            },
            "policyTypes": ["Ingress", "Egress"],
        },
    }


def run_manifests(
    spec: RunSpec,
    *,
    image: str,
    snapshot_id: str,
    namespace: str,
    settings: K8sSettings,
    files: Mapping[str, bytes | str],
) -> list[dict]:
    """Everything one run needs, in the order to create it: the Secret (so the pod finds it
    at once), the Job, and for ``--network none`` a NetworkPolicy."""
    out = [
        secret_manifest(spec, snapshot_id=snapshot_id, namespace=namespace, files=files),
        job_manifest(
            spec,
            image=image,
            snapshot_id=snapshot_id,
            namespace=namespace,
            settings=settings,
            files=list(files),
        ),
    ]
    if spec.network == "none":
        out.append(network_policy_manifest(spec, snapshot_id=snapshot_id, namespace=namespace))
    return out


# -- export ---------------------------------------------------------------------------------


def to_yaml(*objects: Mapping) -> str:
    """Objects as a multi-document YAML stream (``kubectl apply -f`` reads it).

    Uses PyYAML when installed (it comes with JupyterLab and the ``kubernetes`` client);
    otherwise writes JSON documents, which are valid YAML too.
    """
    try:
        import yaml
    except ImportError:
        return "---\n".join(json.dumps(o, indent=2) + "\n" for o in objects)
    return yaml.safe_dump_all(
        [_plain(o) for o in objects], sort_keys=False, default_flow_style=False
    )


def job_yaml(
    spec: RunSpec, *, image: str, snapshot_id: str, namespace: str, settings: K8sSettings
) -> str:
    """The Job of :func:`job_manifest` as YAML. It holds no secret values: those live in the
    Secret, which is not exported."""
    return to_yaml(
        job_manifest(
            spec, image=image, snapshot_id=snapshot_id, namespace=namespace, settings=settings
        )
    )


def _plain(obj):
    if isinstance(obj, Mapping):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def _copy(obj):
    return json.loads(json.dumps(obj))


def _size(n: int) -> str:
    return f"{n / 1024**2:.2f} MiB" if n >= 1024**2 else f"{n / 1024:.1f} KiB"
