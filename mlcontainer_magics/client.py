"""Call a served cell as a function: ``ocr = mlcontainer_magics.service("ocr"); text = ocr(png)``.

Requests go through a transport: plain urllib to the service's URL, or, for a service on a
cluster, its backend's (the API server's service proxy, with the kubeconfig's credentials).
Bodies are encoded and decoded by the runner's own functions (``encode_value``,
``decode_body``), so the client and the server in the container agree on the formats by
construction: JSON, numpy ``.npy``, Parquet for DataFrames, raw bytes.

A name is looked up in the kernel's store (``%config ContainerizeMagics.store_dir``) when
the magics are loaded, else in the environment's.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import sys
import urllib.error
import urllib.parse
import urllib.request
from typing import TYPE_CHECKING

from .errors import MlcError, NotFound, ServiceError, ServiceUnavailable, SpecError
from .runner.mlc_runner import HttpError, decode_body, encode_value

if TYPE_CHECKING:
    from .core.backend import Transport

DEFAULT_TIMEOUT = 60.0  # seconds a call may take, the function's own time included
TRACEBACK_TAIL = 6  # lines of the remote traceback that a ServiceError's message shows


def find_service(name: str, store=None) -> dict:
    """The snapshot record of the newest service called ``name`` that a live process serves
    (status "serving", ``record["service"]["name"]``), in ``store`` (default: this kernel's);
    NotFound names those that run."""
    from .core.services import serving_record

    try:
        return serving_record(store if store is not None else _here()[0], name)
    except NotFound as e:
        raise NotFound(f"{e} Or pass its URL (http://HOST:PORT).") from None


def service(name_or_url: str, *, entry: str | None = None, timeout: float = DEFAULT_TIMEOUT):
    """A client of a served cell: a service name (looked up among the running ones) or a URL
    (``http://HOST:PORT``, e.g. an exported or deployed service). ``entry`` defaults to the
    one the service was started with."""
    if name_or_url.startswith(("http://", "https://")):
        return ServiceClient(name_or_url, entry=entry, timeout=timeout)
    store, backends = _here()
    record = find_service(name_or_url, store)
    info = record["service"]
    return ServiceClient(
        info["url"],
        entry=entry or info.get("entry"),
        name=name_or_url,
        timeout=timeout,
        transport=_transport_of(record, backends),
    )


def _here():
    """The store and backends of this kernel's magics (``%config ContainerizeMagics.store_dir``
    and the Kubernetes settings may differ from the environment's), else the environment's."""
    # IPython is loaded where a kernel runs, and never imported here.
    get_ipython = getattr(sys.modules.get("IPython"), "get_ipython", None)
    shell = get_ipython() if get_ipython is not None else None
    magics = shell.magics_manager.registry.get("ContainerizeMagics") if shell else None
    if magics is not None:
        return magics.store, magics.backends
    from .backends import Backends
    from .config import MlcontainerSettings
    from .core.store import Store

    settings = MlcontainerSettings()
    return Store(settings.store_dir), Backends(settings)


def _transport_of(record: dict, backends) -> Transport | None:
    """How to reach a recorded service: its URL as it is where it runs on this machine's
    engine (the kernel's proxy); else through the backend that runs it (a cluster's API
    server proxy, with the kubeconfig's credentials)."""
    if ((record.get("service") or {}).get("backend") or "docker") == "docker":
        return None
    from .core.services import handle_of

    pool = backends.for_record(record).services
    return pool.transport(handle_of(record)) if pool is not None else None


def _is_loopback(url: str) -> bool:
    host = urllib.parse.urlsplit(url).hostname or ""
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class ServiceClient:
    """Calls one service: ``client(value)`` posts ``value`` to its entry function and returns
    the answer; ``health()`` and ``metadata()`` read its /healthz and /metadata."""

    def __init__(
        self,
        url: str,
        *,
        entry: str | None = None,
        name: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        transport: Transport | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.name = name
        self.timeout = timeout
        self._entry = entry
        self._transport = transport or UrllibTransport(self.url)

    @property
    def entry(self) -> str:
        """The name of the function a call runs (asked of the service when not known)."""
        if self._entry is None:
            self._entry = self.metadata()["entry"]
        return self._entry

    def __repr__(self) -> str:
        named = f"{self.name!r}, " if self.name else ""
        return f"ServiceClient({named}url={self.url!r}, entry={self._entry or '?'!r})"

    def _what(self) -> str:
        return f"service {self.name!r} ({self.url})" if self.name else f"the service at {self.url}"

    def __call__(self, value):
        try:
            content_type, body = encode_value(value)
        except HttpError as e:
            raise SpecError(str(e)) from None
        # "/" is the service's own entry when the client does not know its name.
        path = "/" + (self._entry or "")
        return self._request("POST", path, body, {"Content-Type": content_type})

    def health(self) -> dict:
        return self._request("GET", "/healthz")

    def metadata(self) -> dict:
        return self._request("GET", "/metadata")

    def _request(self, method: str, path: str, body: bytes | None = None, headers=None):
        try:
            status, answered, answer = self._transport(
                method, path, body, headers or {}, self.timeout
            )
        except (TimeoutError, socket.timeout):
            raise ServiceUnavailable(
                f"{self._what()} did not answer {method} {path} within {self.timeout:g} s; "
                f"pass a longer timeout= to service()."
            ) from None
        except (OSError, MlcError) as e:
            raise ServiceUnavailable(
                f"{self._what()} does not answer ({e}); `%container services` lists the "
                f"running ones."
            ) from None
        if status >= 400:
            raise self._error(status, answer)
        content_type = next((v for k, v in answered.items() if k.lower() == "content-type"), None)
        try:
            return decode_body(answer, content_type)
        except HttpError as e:
            needs = e.payload.get("needs")
            hint = f"; install {' '.join(needs)} here to read it" if needs else ""
            raise ServiceError(f"{self._what()} answered {path}: {e}{hint}.") from None

    def _error(self, status: int, raw: bytes) -> ServiceError:
        try:
            payload = json.loads(raw.decode("utf-8"))
        except ValueError:
            payload = {"error": raw.decode("utf-8", "replace")[:500]}
        if not isinstance(payload, dict):
            payload = {"error": str(payload)}
        # The runner says "error"; an API server in between (a Status) says "message".
        said = payload.get("error") or payload.get("message") or "(no message)"
        message = f"{self._what()} answered {status}: {said}"
        tail = (payload.get("traceback") or "").rstrip().splitlines()[-TRACEBACK_TAIL:]
        if tail:
            message += "\nRemote traceback (end):\n" + "\n".join(tail)
        return ServiceError(message, status=status, payload=payload)


class UrllibTransport:
    """Plain HTTP to ``url`` (the default Transport): (status, headers, body) of any answer;
    OSError when none comes (its reason: refused, TimeoutError)."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        # A proxy set in the environment cannot reach this machine's own loopback address.
        handlers = [urllib.request.ProxyHandler({})] if _is_loopback(self.url) else []
        self._opener = urllib.request.build_opener(*handlers)

    def __call__(self, method, path, body, headers, timeout):
        request = urllib.request.Request(
            self.url + path, data=body, headers=dict(headers), method=method
        )
        try:
            with self._opener.open(request, timeout=timeout) as response:
                return response.status, dict(response.headers), response.read()
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers or {}), e.read()
        except urllib.error.URLError as e:  # what it wraps says why: refused, timed out
            reason = e.reason
            raise reason if isinstance(reason, OSError) else OSError(str(reason)) from None
