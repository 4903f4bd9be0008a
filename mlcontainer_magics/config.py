"""Every setting of mlcontainer-magics, in one place, read the same way by every front end.

Two traitlets Configurables: :class:`MlcontainerSettings` (where cells run and how) and
:class:`KubernetesConfig` (the cluster, for ``--backend kubernetes``). Each setting has an
environment variable for terminals and CI. The magics are a subclass of MlcontainerSettings,
so ``%config ContainerizeMagics.NAME = VALUE`` keeps working; the CLI makes one from the
environment; the server makes one under its ServerApp, so Jupyter's own config files
(``c.MlcontainerSettings.namespace = ...``) reach it too.

Imports nothing of the package but its errors: every layer may read settings.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, Callable

from traitlets import Bool, Dict, Float, Int, List, Unicode, default
from traitlets.config import Configurable

from .errors import SpecError

BACKENDS = ("docker", "kubernetes")
DEFAULT_TTL_SECONDS = 3600  # finished Kubernetes Jobs (and their logs) live this long


def env_default(trait: str, variable: str, parse: Callable[[str], Any] = str, unset=None):
    """A traitlets default for ``trait``: the environment variable, parsed, read when an
    object first needs the value; ``unset`` where the variable is unset or empty."""

    def from_environment(self):
        value = os.environ.get(variable)
        return unset if value in (None, "") else parse(value)

    return default(trait)(from_environment)


def _comma_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _false_unless_no(text: str) -> bool:
    return text.lower() not in ("0", "false", "no")


def _true_if_yes(text: str) -> bool:
    return text.lower() in ("1", "true", "yes")


def _label_pairs(text: str) -> dict[str, str]:
    pairs = [p.strip() for p in text.split(",") if p.strip()]
    return {key: value for key, _, value in (p.partition("=") for p in pairs)}


def _json_list(text: str) -> list:
    try:
        value = json.loads(text)
    except ValueError:
        raise SpecError(
            "MLCONTAINER_K8S_TOLERATIONS is not JSON; give a list such as "
            '[{"key": "gpu", "operator": "Exists"}].'
        ) from None
    return value if isinstance(value, list) else [value]


def _int_or_none(text: str) -> int | None:
    return None if text.lower() == "none" else int(text)


def default_store_root():
    """Where snapshots live unless set: $MLCONTAINER_STORE, $XDG_DATA_HOME/mlcontainer, or
    ~/.local/share/mlcontainer."""
    from pathlib import Path

    if os.environ.get("MLCONTAINER_STORE"):
        return Path(os.environ["MLCONTAINER_STORE"]).expanduser()
    if os.environ.get("XDG_DATA_HOME"):
        return Path(os.environ["XDG_DATA_HOME"]).expanduser() / "mlcontainer"
    return Path.home() / ".local" / "share" / "mlcontainer"


class MlcontainerSettings(Configurable):
    """Where and how cells run: `%config ContainerizeMagics.NAME = VALUE` in a notebook,
    `c.MlcontainerSettings.NAME = VALUE` in a Jupyter config file, or the variable given.

      base_image    default base image            MLCONTAINER_BASE_IMAGE; python:X.Y-slim
      namespace     prefix of images/volumes      MLCONTAINER_NAMESPACE; mlcontainer
      timeout       default --timeout in seconds  MLCONTAINER_TIMEOUT; none
      network       default --network             MLCONTAINER_NETWORK; bridge
      raise_error   raise on a nonzero exit       MLCONTAINER_RAISE_ERROR; true
      store_dir     where snapshots are kept      MLCONTAINER_STORE; ~/.local/share/mlcontainer
      backend_name  docker or kubernetes          MLCONTAINER_BACKEND; docker
      standby       a started container kept ready MLCONTAINER_STANDBY; true
      standby_max   standby containers per kernel MLCONTAINER_STANDBY_MAX; 2
      standby_idle  seconds an unused one is kept MLCONTAINER_STANDBY_IDLE; 600
    """

    base_image = Unicode(
        help="Base image of every environment, unless --base is given. Env: MLCONTAINER_BASE_IMAGE."
    ).tag(config=True)
    namespace = Unicode(
        help="Prefix of the images, volumes and labels this package makes. "
        "Env: MLCONTAINER_NAMESPACE."
    ).tag(config=True)
    timeout = Float(
        None, allow_none=True, help="Default --timeout in seconds. Env: MLCONTAINER_TIMEOUT."
    ).tag(config=True)
    network = Unicode(help="Default --network (bridge or none). Env: MLCONTAINER_NETWORK.").tag(
        config=True
    )
    raise_error = Bool(help="Raise when the cell fails. Env: MLCONTAINER_RAISE_ERROR.").tag(
        config=True
    )
    store_dir = Unicode(
        help="Where snapshots are kept. Env: MLCONTAINER_STORE; default ~/.local/share/mlcontainer."
    ).tag(config=True)
    backend_name = Unicode(
        help="Default backend: docker, or kubernetes (see "
        "KubernetesConfig). Env: MLCONTAINER_BACKEND."
    ).tag(config=True)
    default_mounts = List(
        Unicode(),
        help="Mounts every cell gets, as --mount takes them, e.g. ['.'] for the notebook's "
        "folder, read-only. Env: MLCONTAINER_DEFAULT_MOUNTS (comma-separated).",
    ).tag(config=True)
    secrets_file = Unicode(
        None,
        allow_none=True,
        help="A file of NAME=VALUE lines (as .env) that --secret NAME reads when the kernel's "
        "environment has no NAME. Env: MLCONTAINER_SECRETS_FILE.",
    ).tag(config=True)
    export_data_limit = Int(
        100 * 2**20,
        help="Export copies mounted inputs up to this many bytes in all into the export "
        "folder; larger ones are listed with their digests. Env: MLCONTAINER_EXPORT_DATA_LIMIT.",
    ).tag(config=True)

    standby = Bool(
        help="After a cell, keep one started, never-used container ready for its environment "
        "and limits: the next such cell runs in it (a fresh process and filesystem all the "
        "same) instead of waiting for a container to start. Docker backend, kernels only. "
        "Env: MLCONTAINER_STANDBY (0 turns it off)."
    ).tag(config=True)
    standby_max = Int(
        help="At most this many standby containers per kernel (the least recently used goes "
        "first). Env: MLCONTAINER_STANDBY_MAX."
    ).tag(config=True)
    standby_idle = Float(
        help="A standby container unused for this many seconds is removed. "
        "Env: MLCONTAINER_STANDBY_IDLE."
    ).tag(config=True)

    @default("store_dir")
    def _default_store(self):
        return str(default_store_root())

    _base_image = env_default(
        "base_image",
        "MLCONTAINER_BASE_IMAGE",
        unset="python:{}.{}-slim".format(*sys.version_info[:2]),
    )
    _namespace = env_default("namespace", "MLCONTAINER_NAMESPACE", unset="mlcontainer")
    _timeout = env_default("timeout", "MLCONTAINER_TIMEOUT", float)
    _network = env_default("network", "MLCONTAINER_NETWORK", unset="bridge")
    _raise_error = env_default(
        "raise_error", "MLCONTAINER_RAISE_ERROR", _false_unless_no, unset=True
    )
    _backend_name = env_default("backend_name", "MLCONTAINER_BACKEND", unset="docker")
    _default_mounts = env_default(
        "default_mounts", "MLCONTAINER_DEFAULT_MOUNTS", _comma_list, unset=[]
    )
    _secrets_file = env_default("secrets_file", "MLCONTAINER_SECRETS_FILE")
    _standby = env_default("standby", "MLCONTAINER_STANDBY", _false_unless_no, unset=True)
    _standby_max = env_default("standby_max", "MLCONTAINER_STANDBY_MAX", int, unset=2)
    _standby_idle = env_default("standby_idle", "MLCONTAINER_STANDBY_IDLE", float, unset=600.0)
    _export_data_limit = env_default(
        "export_data_limit", "MLCONTAINER_EXPORT_DATA_LIMIT", int, unset=100 * 2**20
    )


class KubernetesConfig(Configurable):
    """Where and how `%%containerize --backend kubernetes` runs cells.

    Set with `%config KubernetesConfig.NAME = VALUE`, or the environment variable given.
    """

    kubeconfig = Unicode(
        help="The kubeconfig file (several separated by ':', as KUBECONFIG). "
        "Env: KUBECONFIG; default ~/.kube/config."
    ).tag(config=True)
    context = Unicode(
        None,
        allow_none=True,
        help="The kubeconfig context to use; default: its current-context. "
        "Env: MLCONTAINER_K8S_CONTEXT.",
    ).tag(config=True)
    in_cluster = Bool(
        help="Use the service account of the pod this kernel runs in instead of a kubeconfig "
        "(JupyterHub on Kubernetes). Env: MLCONTAINER_K8S_IN_CLUSTER=1."
    ).tag(config=True)
    k8s_namespace = Unicode(
        None,
        allow_none=True,
        help="The Kubernetes namespace runs go to; default: the context's namespace (in a "
        "cluster: the pod's own), else 'default'. Env: MLCONTAINER_K8S_NAMESPACE.",
    ).tag(config=True)
    registry = Unicode(
        None,
        allow_none=True,
        help="Registry the cluster pulls environment images from, as host[:port][/path] "
        "(e.g. registry.example.com/team); images are pushed there when it lacks them. "
        "Required. Env: MLCONTAINER_K8S_REGISTRY.",
    ).tag(config=True)
    registry_username = Unicode(
        None,
        allow_none=True,
        help="Login for pushing to the registry; none: the engine's stored login "
        "(`docker login`). Env: MLCONTAINER_K8S_REGISTRY_USERNAME.",
    ).tag(config=True)
    registry_password = Unicode(
        None,
        allow_none=True,
        help="Password or token for registry_username. Env: MLCONTAINER_K8S_REGISTRY_PASSWORD.",
    ).tag(config=True)
    image_pull_secret = Unicode(
        None,
        allow_none=True,
        help="Name of a docker-registry Secret in the namespace that lets the cluster pull "
        "from a private registry. Env: MLCONTAINER_K8S_IMAGE_PULL_SECRET.",
    ).tag(config=True)
    service_account = Unicode(
        None,
        allow_none=True,
        help="Service account of the run's pod; none: no service account token is mounted "
        "(the cell cannot call the cluster's API). "
        "Env: MLCONTAINER_K8S_SERVICE_ACCOUNT.",
    ).tag(config=True)
    node_selector = Dict(
        help="Node labels the pod must run on, e.g. {'nvidia.com/gpu.present': 'true'}. "
        "Env: MLCONTAINER_K8S_NODE_SELECTOR='key=value,key2=value2'."
    ).tag(config=True)
    tolerations = List(
        Dict(),
        help="Taints the pod tolerates, as Kubernetes writes them, e.g. [{'key': 'gpu', "
        "'operator': 'Exists', 'effect': 'NoSchedule'}]. "
        "Env: MLCONTAINER_K8S_TOLERATIONS (a JSON list).",
    ).tag(config=True)
    volumes = Dict(
        Unicode(),
        help="What --mount NAME means on the cluster: a PersistentVolumeClaim, e.g. "
        "{'data': 'pvc:training-data'} (pvc:CLAIM[/sub/path]). Other mounts travel with the "
        "Job when small and read-only. Env: MLCONTAINER_K8S_VOLUMES='data=pvc:training-data'.",
    ).tag(config=True)
    default_cpus = Float(
        None,
        allow_none=True,
        help="CPUs a run gets when it gives no --cpus (requests = limits). "
        "Env: MLCONTAINER_K8S_DEFAULT_CPUS.",
    ).tag(config=True)
    default_memory = Unicode(
        None,
        allow_none=True,
        help="Memory a run gets when it gives no --memory, e.g. 2g (requests = limits). "
        "Env: MLCONTAINER_K8S_DEFAULT_MEMORY.",
    ).tag(config=True)
    ttl_seconds = Int(
        DEFAULT_TTL_SECONDS,
        allow_none=True,
        help="Finished Jobs (and their pods' logs) are deleted by the cluster this many seconds "
        "after they end; None keeps them. Env: MLCONTAINER_K8S_TTL_SECONDS.",
    ).tag(config=True)
    schedule_timeout = Float(
        300.0,
        help="How long a pod may wait for a node (e.g. for an autoscaler to add one) before "
        "the run fails with the scheduler's reason; 0 fails at once. "
        "Env: MLCONTAINER_K8S_SCHEDULE_TIMEOUT.",
    ).tag(config=True)

    _kubeconfig = env_default("kubeconfig", "KUBECONFIG", unset="")
    _context = env_default("context", "MLCONTAINER_K8S_CONTEXT")
    _in_cluster = env_default("in_cluster", "MLCONTAINER_K8S_IN_CLUSTER", _true_if_yes, unset=False)
    _k8s_namespace = env_default("k8s_namespace", "MLCONTAINER_K8S_NAMESPACE")
    _registry = env_default("registry", "MLCONTAINER_K8S_REGISTRY")
    _registry_username = env_default("registry_username", "MLCONTAINER_K8S_REGISTRY_USERNAME")
    _registry_password = env_default("registry_password", "MLCONTAINER_K8S_REGISTRY_PASSWORD")
    _image_pull_secret = env_default("image_pull_secret", "MLCONTAINER_K8S_IMAGE_PULL_SECRET")
    _service_account = env_default("service_account", "MLCONTAINER_K8S_SERVICE_ACCOUNT")
    _node_selector = env_default(
        "node_selector", "MLCONTAINER_K8S_NODE_SELECTOR", _label_pairs, unset={}
    )
    _tolerations = env_default("tolerations", "MLCONTAINER_K8S_TOLERATIONS", _json_list, unset=[])
    _volumes = env_default("volumes", "MLCONTAINER_K8S_VOLUMES", _label_pairs, unset={})
    _default_cpus = env_default("default_cpus", "MLCONTAINER_K8S_DEFAULT_CPUS", float)
    _default_memory = env_default("default_memory", "MLCONTAINER_K8S_DEFAULT_MEMORY")
    _ttl_seconds = env_default(
        "ttl_seconds", "MLCONTAINER_K8S_TTL_SECONDS", _int_or_none, unset=DEFAULT_TTL_SECONDS
    )
    _schedule_timeout = env_default(
        "schedule_timeout", "MLCONTAINER_K8S_SCHEDULE_TIMEOUT", float, unset=300.0
    )

    @classmethod
    def class_get_trait_help(cls, trait, inst=None, helptext=None):
        # `%config KubernetesConfig` shows current values: never the password's.
        if trait.name == "registry_password":
            inst = None
        return super().class_get_trait_help(trait, inst, helptext)
