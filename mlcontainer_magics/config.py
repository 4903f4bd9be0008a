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

from traitlets import Bool, Dict, Float, Int, List, Unicode, default
from traitlets.config import Configurable

from .errors import SpecError

ENV_PREFIX = "MLCONTAINER_"
K8S_ENV_PREFIX = "MLCONTAINER_K8S_"
BACKENDS = ("docker", "kubernetes")
DEFAULT_TTL_SECONDS = 3600  # finished Kubernetes Jobs (and their logs) live this long


def _env(name: str, fallback=None):
    return os.environ.get(ENV_PREFIX + name, fallback)


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
    """

    base_image = Unicode(help="Base image of every environment, unless --base is given. "
                              "Env: MLCONTAINER_BASE_IMAGE.").tag(config=True)
    namespace = Unicode(help="Prefix of the images, volumes and labels this package makes. "
                             "Env: MLCONTAINER_NAMESPACE.").tag(config=True)
    timeout = Float(None, allow_none=True,
                    help="Default --timeout in seconds. Env: MLCONTAINER_TIMEOUT.").tag(config=True)
    network = Unicode(help="Default --network (bridge or none). "
                           "Env: MLCONTAINER_NETWORK.").tag(config=True)
    raise_error = Bool(help="Raise when the cell fails. Env: MLCONTAINER_RAISE_ERROR."
                       ).tag(config=True)
    store_dir = Unicode(help="Where snapshots are kept. Env: MLCONTAINER_STORE; default "
                             "~/.local/share/mlcontainer.").tag(config=True)
    backend_name = Unicode(help="Default backend: docker, or kubernetes (see "
                                "KubernetesConfig). Env: MLCONTAINER_BACKEND.").tag(config=True)

    @default("store_dir")
    def _default_store(self):
        return str(default_store_root())

    @default("base_image")
    def _default_base(self):
        return _env("BASE_IMAGE", "python:{}.{}-slim".format(*sys.version_info[:2]))

    @default("namespace")
    def _default_namespace(self):
        return _env("NAMESPACE", "mlcontainer")

    @default("timeout")
    def _default_timeout(self):
        value = _env("TIMEOUT", None)
        return float(value) if value else None

    @default("network")
    def _default_network(self):
        return _env("NETWORK", "bridge")

    @default("raise_error")
    def _default_raise(self):
        return _env("RAISE_ERROR", "true").lower() not in ("0", "false", "no")

    @default("backend_name")
    def _default_backend(self):
        return _env("BACKEND", "docker")


def _k8s_env(name: str, fallback=None):
    value = os.environ.get(K8S_ENV_PREFIX + name)
    return value if value not in (None, "") else fallback


class KubernetesConfig(Configurable):
    """Where and how `%%containerize --backend kubernetes` runs cells.

    Set with `%config KubernetesConfig.NAME = VALUE`, or the environment variable given.
    """

    kubeconfig = Unicode(
        help="The kubeconfig file (several separated by ':', as KUBECONFIG). "
             "Env: KUBECONFIG; default ~/.kube/config.").tag(config=True)
    context = Unicode(
        None, allow_none=True,
        help="The kubeconfig context to use; default: its current-context. "
             "Env: MLCONTAINER_K8S_CONTEXT.").tag(config=True)
    in_cluster = Bool(
        help="Use the service account of the pod this kernel runs in instead of a kubeconfig "
             "(JupyterHub on Kubernetes). Env: MLCONTAINER_K8S_IN_CLUSTER=1.").tag(config=True)
    k8s_namespace = Unicode(
        None, allow_none=True,
        help="The Kubernetes namespace runs go to; default: the context's namespace (in a "
             "cluster: the pod's own), else 'default'. Env: MLCONTAINER_K8S_NAMESPACE."
    ).tag(config=True)
    registry = Unicode(
        None, allow_none=True,
        help="Registry the cluster pulls environment images from, as host[:port][/path] "
             "(e.g. registry.example.com/team); images are pushed there when it lacks them. "
             "Required. Env: MLCONTAINER_K8S_REGISTRY.").tag(config=True)
    registry_username = Unicode(
        None, allow_none=True,
        help="Login for pushing to the registry; none: the engine's stored login "
             "(`docker login`). Env: MLCONTAINER_K8S_REGISTRY_USERNAME.").tag(config=True)
    registry_password = Unicode(
        None, allow_none=True,
        help="Password or token for registry_username. "
             "Env: MLCONTAINER_K8S_REGISTRY_PASSWORD.").tag(config=True)
    image_pull_secret = Unicode(
        None, allow_none=True,
        help="Name of a docker-registry Secret in the namespace that lets the cluster pull "
             "from a private registry. Env: MLCONTAINER_K8S_IMAGE_PULL_SECRET.").tag(config=True)
    service_account = Unicode(
        None, allow_none=True,
        help="Service account of the run's pod; none: no service account token is mounted "
             "(the cell cannot call the cluster's API). "
             "Env: MLCONTAINER_K8S_SERVICE_ACCOUNT.").tag(config=True)
    node_selector = Dict(
        help="Node labels the pod must run on, e.g. {'nvidia.com/gpu.present': 'true'}. "
             "Env: MLCONTAINER_K8S_NODE_SELECTOR='key=value,key2=value2'.").tag(config=True)
    tolerations = List(
        Dict(),
        help="Taints the pod tolerates, as Kubernetes writes them, e.g. [{'key': 'gpu', "
             "'operator': 'Exists', 'effect': 'NoSchedule'}]. "
             "Env: MLCONTAINER_K8S_TOLERATIONS (a JSON list).").tag(config=True)
    default_cpus = Float(
        None, allow_none=True,
        help="CPUs a run gets when it gives no --cpus (requests = limits). "
             "Env: MLCONTAINER_K8S_DEFAULT_CPUS.").tag(config=True)
    default_memory = Unicode(
        None, allow_none=True,
        help="Memory a run gets when it gives no --memory, e.g. 2g (requests = limits). "
             "Env: MLCONTAINER_K8S_DEFAULT_MEMORY.").tag(config=True)
    ttl_seconds = Int(
        DEFAULT_TTL_SECONDS, allow_none=True,
        help="Finished Jobs (and their pods' logs) are deleted by the cluster this many seconds "
             "after they end; None keeps them. Env: MLCONTAINER_K8S_TTL_SECONDS.").tag(config=True)
    schedule_timeout = Float(
        300.0,
        help="How long a pod may wait for a node (e.g. for an autoscaler to add one) before "
             "the run fails with the scheduler's reason; 0 fails at once. "
             "Env: MLCONTAINER_K8S_SCHEDULE_TIMEOUT.").tag(config=True)

    @default("kubeconfig")
    def _default_kubeconfig(self):
        return os.environ.get("KUBECONFIG", "")

    @default("context")
    def _default_context(self):
        return _k8s_env("CONTEXT")

    @default("in_cluster")
    def _default_in_cluster(self):
        return _k8s_env("IN_CLUSTER", "").lower() in ("1", "true", "yes")

    @default("k8s_namespace")
    def _default_namespace(self):
        return _k8s_env("NAMESPACE")

    @default("registry")
    def _default_registry(self):
        return _k8s_env("REGISTRY")

    @default("registry_username")
    def _default_username(self):
        return _k8s_env("REGISTRY_USERNAME")

    @default("registry_password")
    def _default_password(self):
        return _k8s_env("REGISTRY_PASSWORD")

    @default("image_pull_secret")
    def _default_pull_secret(self):
        return _k8s_env("IMAGE_PULL_SECRET")

    @default("service_account")
    def _default_service_account(self):
        return _k8s_env("SERVICE_ACCOUNT")

    @default("node_selector")
    def _default_node_selector(self):
        pairs = [p for p in (_k8s_env("NODE_SELECTOR", "")).split(",") if p.strip()]
        return dict(p.strip().split("=", 1) if "=" in p else (p.strip(), "") for p in pairs)

    @default("tolerations")
    def _default_tolerations(self):
        text = _k8s_env("TOLERATIONS")
        if not text:
            return []
        try:
            value = json.loads(text)
        except ValueError:
            raise SpecError("MLCONTAINER_K8S_TOLERATIONS is not JSON; give a list such as "
                            '[{"key": "gpu", "operator": "Exists"}].') from None
        return value if isinstance(value, list) else [value]

    @default("default_cpus")
    def _default_cpus(self):
        value = _k8s_env("DEFAULT_CPUS")
        return float(value) if value else None

    @default("default_memory")
    def _default_memory(self):
        return _k8s_env("DEFAULT_MEMORY")

    @default("ttl_seconds")
    def _default_ttl(self):
        value = _k8s_env("TTL_SECONDS")
        if value is None:
            return DEFAULT_TTL_SECONDS
        return None if value.lower() in ("none", "") else int(value)

    @default("schedule_timeout")
    def _default_schedule_timeout(self):
        return float(_k8s_env("SCHEDULE_TIMEOUT", 300))

    @classmethod
    def class_get_trait_help(cls, trait, inst=None, helptext=None):
        # `%config KubernetesConfig` shows current values: never the password's.
        if trait.name == "registry_password":
            inst = None
        return super().class_get_trait_help(trait, inst, helptext)
