"""Call a served cell as a function: ``ocr = mlcontainer_magics.service("ocr"); text = ocr(png)``.

Plain urllib, no other dependency. Bodies are encoded and decoded by the runner's own functions
(``encode_value``, ``decode_body``), so the client and the server in the container agree on the
formats by construction: JSON, numpy ``.npy``, Parquet for DataFrames, raw bytes.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import urllib.error
import urllib.parse
import urllib.request

from .errors import NotFound, ServiceError, ServiceUnavailable, SpecError
from .runner.mlc_runner import HttpError, decode_body, encode_value

DEFAULT_TIMEOUT = 60.0  # seconds a call may take, the function's own time included
TRACEBACK_TAIL = 6  # lines of the remote traceback that a ServiceError's message shows


def find_service(name: str) -> dict:
    """The snapshot record of the newest running service called ``name`` (status "serving",
    ``record["service"]["name"]``); NotFound names the running ones."""
    from .config import MlcontainerSettings
    from .core.store import Store

    store = Store(MlcontainerSettings().store_dir)
    running = []
    for summary in store.list(status="serving", limit=None):
        record = store.get(summary["id"])
        found = (record.get("service") or {}).get("name")
        if found == name:
            return record
        running.append(found)
    if not running:
        raise NotFound(
            f"No service {name!r} is running, nor any other; start one with "
            f"`%%containerize --serve {name}`, or pass its URL (http://HOST:PORT)."
        )
    raise NotFound(
        f"No service {name!r} is running; running: {', '.join(sorted(set(map(str, running))))}."
    )


def service(name_or_url: str, *, entry: str | None = None, timeout: float = DEFAULT_TIMEOUT):
    """A client of a served cell: a service name (looked up among the running ones) or a URL
    (``http://HOST:PORT``, e.g. an exported or deployed service). ``entry`` defaults to the
    one the service was started with."""
    if name_or_url.startswith(("http://", "https://")):
        return ServiceClient(name_or_url, entry=entry, timeout=timeout)
    info = find_service(name_or_url)["service"]
    return ServiceClient(
        info["url"], entry=entry or info.get("entry"), name=name_or_url, timeout=timeout
    )


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
    ) -> None:
        self.url = url.rstrip("/")
        self.name = name
        self.timeout = timeout
        self._entry = entry
        # A proxy set in the environment cannot reach this machine's own loopback address.
        handlers = [urllib.request.ProxyHandler({})] if _is_loopback(self.url) else []
        self._opener = urllib.request.build_opener(*handlers)

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
        request = urllib.request.Request(
            self.url + path, data=body, headers=headers or {}, method=method
        )
        try:
            with self._opener.open(request, timeout=self.timeout) as response:
                content_type, answer = response.headers.get("Content-Type"), response.read()
        except urllib.error.HTTPError as e:
            raise self._error(e.code, e.read()) from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            if isinstance(reason, socket.timeout):
                raise ServiceUnavailable(
                    f"{self._what()} did not answer {method} {path} within {self.timeout:g} s; "
                    f"pass a longer timeout= to service()."
                ) from None
            raise ServiceUnavailable(
                f"{self._what()} does not answer ({reason}); `%container services` lists the "
                f"running ones."
            ) from None
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
        message = f"{self._what()} answered {status}: {payload.get('error', '(no message)')}"
        tail = (payload.get("traceback") or "").rstrip().splitlines()[-TRACEBACK_TAIL:]
        if tail:
            message += "\nRemote traceback (end):\n" + "\n".join(tail)
        return ServiceError(message, status=status, payload=payload)
