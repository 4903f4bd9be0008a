"""Loading the official client for a kubeconfig context or in-cluster, and reading its errors.
The translation of ApiException into our errors is the backend's (``_cluster_errors``)."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

from ...errors import ClusterUnavailable

SERVICE_ACCOUNT_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


class Api:
    """The official client's API groups, over one ApiClient."""

    def __init__(self, api_client, context: str = "") -> None:
        from kubernetes import client

        self.client = api_client
        self.context = context  # the kubeconfig context it came from, for messages
        self.core = client.CoreV1Api(api_client)
        self.batch = client.BatchV1Api(api_client)
        self.net = client.NetworkingV1Api(api_client)


def load_client(in_cluster: bool, kubeconfig: str, context: str | None) -> tuple[Api, str]:
    from kubernetes import client, config

    try:
        if in_cluster:
            configuration = client.Configuration()
            config.load_incluster_config(client_configuration=configuration)
            namespace = "default"
            with contextlib.suppress(OSError):
                namespace = Path(SERVICE_ACCOUNT_NAMESPACE).read_text().strip() or namespace
            return Api(client.ApiClient(configuration), "in-cluster"), namespace
        path = kubeconfig or "~/.kube/config"
        contexts, active = config.list_kube_config_contexts(config_file=path)
        chosen = active
        if context:
            chosen = next((c for c in contexts if c.get("name") == context), None)
            if chosen is None:
                names = ", ".join(c.get("name", "?") for c in contexts) or "none"
                raise ClusterUnavailable(
                    f"The kubeconfig {path} has no context {context!r} (it has: {names}). Set "
                    '`%config KubernetesConfig.context = "NAME"` to one of them.'
                )
        api_client = config.new_client_from_config(
            config_file=path, context=(chosen or {}).get("name"), persist_config=False
        )
    except config.ConfigException as e:
        where = (
            "in-cluster configuration"
            if in_cluster
            else f"kubeconfig {kubeconfig or '~/.kube/config'}"
        )
        raise ClusterUnavailable(
            f"Cannot use the {where}: {first_line(e)}. Point KubernetesConfig.kubeconfig (or "
            "KUBECONFIG) at a kubeconfig, choose a context with KubernetesConfig.context, or "
            "set KubernetesConfig.in_cluster = True when the kernel runs in the cluster."
        ) from None
    namespace = ((chosen or {}).get("context") or {}).get("namespace") or "default"
    return Api(api_client, (chosen or {}).get("name", "")), namespace


def connection_errors() -> tuple[type[BaseException], ...]:
    import urllib3

    return (urllib3.exceptions.HTTPError, ConnectionError, TimeoutError)


def api_message(e) -> str:
    """The Status message the API server sent, or the HTTP reason."""
    try:
        body = json.loads(e.body)
        if isinstance(body, dict) and body.get("message"):
            return str(body["message"])
    except (TypeError, ValueError):
        pass
    return str(e.reason or "no detail").strip()


def first_line(e) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:300].rstrip(".") if text else type(e).__name__


def connection_problem(e) -> str:
    """What went wrong in words, without urllib3's wrapping: "[Errno 111] Connection refused"."""
    text = str(getattr(e, "reason", None) or e)
    at = text.rfind("[Errno")
    if at >= 0:
        return text[at:].split("'")[0].split('"')[0].rstrip(")").strip()
    return first_line(e)
