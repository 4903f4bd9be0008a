"""The services the sidebar lists: snapshot records with status ``serving``, each with what its
running server says about itself (``GET {url}/metadata``), asked with a short timeout.

A record keeps ``service: {name, url, port, entry, replicas, backend}`` (see serve-design's
Records). What the server answers is only ever shown: a service that does not answer in
``METADATA_TIMEOUT`` seconds, or answers something else than its metadata, is listed as not
answering, with why, and never holds the listing up longer than that.
"""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timezone
from urllib.parse import urlsplit

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

METADATA_TIMEOUT = 1.0  # seconds, to connect and to answer together
METADATA_MAX_BYTES = 64 * 1024  # a metadata answer is a few hundred bytes
# What the list copies from a metadata answer, and the JSON type it accepts for each.
METADATA_FIELDS: dict[str, type] = {
    "requests": int,
    "errors": int,
    "started": str,
    "signature": str,
    "python": str,
    "lock_digest": str,
}


def service_item(record: dict) -> dict:
    """What the list shows of a serving record, before its server is asked."""
    block = record.get("service")
    service: dict = block if isinstance(block, dict) else {}
    return {
        "id": record["id"],
        "name": _typed(service.get("name"), str) or _typed(record.get("name"), str),
        "url": _typed(service.get("url"), str),
        "port": _typed(service.get("port"), int),
        "entry": _typed(service.get("entry"), str),
        "replicas": _typed(service.get("replicas"), int),
        "backend": _typed(service.get("backend"), str)
        or _typed(record.get("backend"), str)
        or "docker",
        "status": record.get("status"),
        "created": record.get("created"),
        "notebook": record.get("notebook"),
        "stop_requested": record.get("stop_requested") is True,
        "answering": False,
        "message": None,
        "uptime": None,
        **dict.fromkeys(METADATA_FIELDS),
    }


def _typed(value, kind: type):
    """``value`` if it is a ``kind`` (a bool is no int here), else None."""
    return value if isinstance(value, kind) and not isinstance(value, bool) else None


def metadata_url(url) -> str | None:
    """``{url}/metadata`` for an http(s) URL with a host; None for anything else."""
    if not isinstance(url, str):
        return None
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    return url.rstrip("/") + "/metadata"


async def fetch_metadata(url, timeout: float = METADATA_TIMEOUT) -> tuple[dict | None, str | None]:
    """(the server's metadata, None), or (None, why there is none) after ``timeout`` at most."""
    target = metadata_url(url)
    if target is None:
        return None, f"Its record has no http URL to ask ({url!r})."
    client = AsyncHTTPClient(force_instance=True, max_body_size=METADATA_MAX_BYTES)
    request = HTTPRequest(
        target,
        connect_timeout=timeout,
        request_timeout=timeout,
        follow_redirects=False,
        headers={"Accept": "application/json"},
    )
    try:
        # The client's own timeouts, and this one in case a connection neither fails nor ends.
        response = await asyncio.wait_for(client.fetch(request, raise_error=False), timeout + 1)
        error = response.error if response.code == 599 else None  # 599: no HTTP answer at all
    except Exception as e:  # noqa: BLE001 - whatever happened, the service did not answer
        error = e
    finally:
        client.close()
    if error is not None:
        return None, _no_answer(error, timeout)
    if response.code != 200:
        return None, f"GET /metadata answered {response.code}, not the service's metadata."
    try:
        data = json.loads(response.body)
    except ValueError:
        data = None
    if not isinstance(data, dict):
        return None, "GET /metadata answered something other than a JSON object."
    return data, None


def _no_answer(error: BaseException, timeout: float) -> str:
    # Tornado's timeouts are HTTPClientError 599 ("Timeout while connecting", "... during request").
    timed_out = isinstance(error, HTTPClientError) and error.code == 599
    if timed_out or isinstance(error, asyncio.TimeoutError):
        return f"No answer to GET /metadata within {timeout:g} s."
    if isinstance(error, ConnectionRefusedError):
        return "Nothing listens at its URL (connection refused)."
    return f"No answer to GET /metadata: {str(error) or type(error).__name__}."


def with_metadata(item: dict, metadata: dict | None, message: str | None, now: float) -> dict:
    """The item with what the server said (fields of the wrong type are left out)."""
    out = dict(item, answering=metadata is not None, message=message)
    for field, kind in METADATA_FIELDS.items():
        out[field] = _typed((metadata or {}).get(field), kind)
    started = parse_time(out["started"])
    out["uptime"] = max(0.0, now - started) if started is not None else None
    return out


def parse_time(value) -> float | None:
    """ISO 8601 (with ``Z`` or an offset; a time without one is UTC) -> epoch seconds."""
    if not isinstance(value, str) or not value:
        return None
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when.timestamp()


async def describe(records: list[dict], now: float) -> list[dict]:
    """The items of serving records, every server asked at the same time."""
    items = [service_item(r) for r in records]
    answers = await asyncio.gather(*(fetch_metadata(item["url"]) for item in items))
    return [with_metadata(item, meta, why, now) for item, (meta, why) in zip(items, answers)]
