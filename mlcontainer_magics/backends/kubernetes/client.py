"""Loading the official client for a kubeconfig context or in-cluster, calling it with the
patience a real cluster asks for, and reading its errors. The translation of ApiException into
our errors is the backend's (``_cluster_errors``)."""

from __future__ import annotations

import contextlib
import json
import random
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from ...errors import ClusterUnavailable

SERVICE_ACCOUNT_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
# Answers a busy or briefly broken cluster gives (API priority and fairness, an etcd leader
# change, a load balancer between replicas): worth the same call again, after a while.
TRANSIENT_STATUSES = (429, 500, 502, 503, 504)
API_PATIENCE = 60.0  # seconds a call keeps trying through transient answers
LOG_TIMEOUTS = (15, 120)  # connect, read: a silent log stream is opened again after this


class Backoff:
    """Exponential waits with jitter, from ``first`` to ``most`` seconds; ``reset`` after
    progress."""

    def __init__(self, first: float = 0.1, most: float = 2.0) -> None:
        self.first, self.most = first, most
        self.delay = first

    def next(self) -> float:
        wait = self.delay * random.uniform(0.75, 1.25)
        self.delay = min(self.delay * 2, self.most)
        return wait

    def sleep(self) -> None:
        time.sleep(self.next())

    def reset(self) -> None:
        self.delay = self.first


def patiently(
    call: Callable[[], Any],
    *,
    creating: bool = False,
    patience: float = API_PATIENCE,
    reconnect: bool = True,
):
    """``call()``, again with backoff while the cluster answers 429 (after its Retry-After),
    5xx, or (with ``reconnect``) the connection breaks, for up to ``patience`` seconds. A
    create whose answer was lost may have been made: a 409 on its retry means it was, and the
    answer is None."""
    from kubernetes.client.rest import ApiException

    deadline = time.monotonic() + patience
    backoff = Backoff(0.2, 5.0)
    retried = False
    while True:
        try:
            return call()
        except ApiException as e:
            if creating and retried and e.status == 409:
                return None
            if e.status not in TRANSIENT_STATUSES:
                raise
            wait = retry_after(e) or backoff.next()
            if time.monotonic() + wait > deadline:
                raise
        except connection_errors():
            wait = backoff.next()
            if not reconnect or time.monotonic() + wait > deadline:
                raise
        time.sleep(wait)
        retried = True


def retry_after(e) -> float | None:
    """The seconds a 429 or 503 asks the client to wait (its Retry-After header)."""
    headers = getattr(e, "headers", None) or {}
    value = headers.get("Retry-After") if hasattr(headers, "get") else None
    try:
        return min(float(value), API_PATIENCE) if value else None
    except ValueError:
        return None


class _Patient:
    """An API group whose calls go through :func:`patiently`. A broken connection is worth
    trying again only once the server has answered: one that never did is not there."""

    def __init__(self, group, api: Api) -> None:
        self._group, self._api = group, api

    def __getattr__(self, name: str):
        call = getattr(self._group, name)
        if name.startswith("_") or not callable(call):
            return call

        def patient(*args, **kwargs):
            answer = patiently(
                lambda: call(*args, **kwargs),
                creating=name.startswith("create_"),
                patience=self._api.patient_for,
                reconnect=self._api.answered,
            )
            self._api.answered = True
            return answer

        return patient


class Api:
    """The official client's API groups, over one ApiClient. ``core``, ``batch``, ``apps`` and
    ``net`` retry transient answers; ``core_raw`` is the plain group (streams handle breaks
    themselves)."""

    def __init__(self, api_client, context: str = "") -> None:
        from kubernetes import client

        self.client = api_client
        self.context = context  # the kubeconfig context it came from, for messages
        self.answered = False  # has the server answered a call yet?
        self.patient_for = API_PATIENCE  # seconds a call retries transient answers
        self.core_raw = client.CoreV1Api(api_client)
        self.core: Any = _Patient(self.core_raw, self)
        self.batch: Any = _Patient(client.BatchV1Api(api_client), self)
        self.apps: Any = _Patient(client.AppsV1Api(api_client), self)
        self.net: Any = _Patient(client.NetworkingV1Api(api_client), self)
        self.version: Any = _Patient(client.VersionApi(api_client), self)

    @contextlib.contextmanager
    def patience(self, seconds: float):
        """Calls within retry for ``seconds`` at most (cleanup must not hold up an interrupt)."""
        before, self.patient_for = self.patient_for, seconds
        try:
            yield
        finally:
            self.patient_for = before


def open_pod_log(api: Api, namespace: str, pod: str, container: str, *, follow: bool, since=None):
    """The container's log with a timestamp on each line, from ``since`` (an RFC 3339 time:
    the API server keeps its whole seconds), as a urllib3 response to stream. The generated
    client has no ``sinceTime``, so the request it would make gets it added."""
    from kubernetes.client.rest import ApiException

    method, url, headers, body, post = api.core_raw._read_namespaced_pod_log_serialize(
        name=pod,
        namespace=namespace,
        container=container,
        follow=follow,
        insecure_skip_tls_verify_backend=None,
        limit_bytes=None,
        pretty=None,
        previous=None,
        since_seconds=None,
        stream=None,
        tail_lines=None,
        timestamps=True,
        _request_auth=None,
        _content_type=None,
        _headers=None,
        _host_index=0,
    )
    if since:
        url += ("&" if "?" in url else "?") + urlencode({"sinceTime": since})
    response = api.client.call_api(method, url, headers, body, post, _request_timeout=LOG_TIMEOUTS)
    if not 200 <= response.status <= 299:
        response.read()
        raise ApiException.from_response(http_resp=response, body=None, data=None)
    return response.response


class ExecBroken(Exception):
    """An exec stream that ended without the command's status: the connection broke."""


def exec_output(api: Api, namespace: str, pod: str, container: str, command) -> Iterator[bytes]:
    """Run ``command`` in the container (``pods/exec``) and yield its stdout as it comes.
    Raises ExecBroken when the stream breaks, RuntimeError when the command fails, and an
    ApiException with the handshake's status when the server refuses."""
    from kubernetes import client
    from kubernetes.client.rest import ApiException
    from kubernetes.stream import stream

    # stream() swaps the ApiClient's request method for a WebSocket call while it runs: an
    # ApiClient of its own, so calls of other threads (a Stop) stay plain HTTP.
    own = client.CoreV1Api(client.ApiClient(api.client.configuration))
    try:
        ws = stream(
            own.connect_get_namespaced_pod_exec,
            pod,
            namespace,
            command=list(command),
            container=container,
            stdin=False,
            stdout=True,
            stderr=True,
            tty=False,
            _preload_content=False,
            binary=True,
        )
    except ApiException as e:
        raise _handshake_error(e) from None
    status: bytes = b""
    stderr: bytes = b""
    try:
        ws.sock.settimeout(LOG_TIMEOUTS[1])
        while True:
            channel, data = _next_message(ws)
            if channel is None:
                break
            if channel == 1 and data:
                yield data
            elif channel == 2:
                stderr += data
            elif channel == 3:
                status += data
    finally:
        with contextlib.suppress(Exception):
            ws.close()
    if not status:
        raise ExecBroken("the exec stream ended without the command's status")
    try:
        answer = json.loads(status)
    except ValueError:
        raise ExecBroken("the exec stream's status is cut") from None
    if answer.get("status") != "Success":
        why = stderr.decode("utf-8", "replace").strip() or answer.get("message", "")
        raise RuntimeError(f"{' '.join(command)}: {why}")


def _next_message(ws) -> tuple[int | None, bytes]:
    """The next message of an exec stream, read from its socket one at a time (the client's
    own buffering copies all it holds on every frame): (channel, data), or (None, b"") once
    the server closed it."""
    from websocket import ABNF

    try:
        opcode, frame = ws.sock.recv_data_frame(True)
    except Exception as e:  # the websocket library's: closed, reset, timed out
        raise ExecBroken(str(e) or type(e).__name__) from None
    if opcode == ABNF.OPCODE_CLOSE:
        return None, b""
    data = frame.data if isinstance(frame.data, bytes) else str(frame.data).encode()
    if opcode not in (ABNF.OPCODE_BINARY, ABNF.OPCODE_TEXT) or not data:
        return -1, b""  # a ping, a pong
    return data[0], data[1:]


def _handshake_error(e):
    """The websocket library reports a refused exec as text ("Handshake status 403 Forbidden
    -+-+- headers -+-+- body"): an ApiException with that status and body again."""
    from kubernetes.client.rest import ApiException

    text = str(e.reason or "")
    m = re.search(r"Handshake status (\d{3})", text)
    if not m:
        return e
    refused = ApiException(status=int(m.group(1)), reason=text.split("-+-+-")[0].strip())
    parts = text.split("-+-+-")
    if len(parts) >= 3:
        body = parts[-1].strip()
        if body.startswith(("b'", 'b"')):
            body = body[2:-1].encode().decode("unicode_escape")
        refused.body = body
    return refused


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


def body_of(response) -> dict:
    """The body of a ``_preload_content=False`` response: plain dicts, as the builders make."""
    return json.loads(response.data)


def read_or_none(read, name: str, namespace: str) -> dict | None:
    """An object as a dict, or None when it does not exist (404)."""
    from kubernetes.client.rest import ApiException

    try:
        return body_of(read(name, namespace, _preload_content=False))
    except ApiException as e:
        if e.status == 404:
            return None
        raise
