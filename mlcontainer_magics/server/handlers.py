"""REST handlers for the sidebar, under ``{base_url}/mlcontainer/``.

    GET    snapshots                 ?limit=&offset=&notebook=&name=&status=  -> {items, total, ...}
    GET    snapshots/{ref}           the full record
    GET    snapshots/{ref}/logs      {id, logs, stdout, stderr}
    DELETE snapshots/{ref}           {removed} (?force=1 for a building/running one)
    POST   snapshots/{ref}/rerun     run it again from its lock ({"verify": true} checks outputs)
    POST   snapshots/{ref}/export    export under <root>/mlcontainer-exports/ ({"tar": true})
    GET    running                   {items, engine}: containers the product labelled, live
    POST   running/{ref}/stop        {stopped}: stops the running container(s) of a snapshot
    GET    status                    {version, engine: {up, version, message}, store}

Rules kept here: every verb is ``@tornado.web.authenticated`` (writes are XSRF-checked by
jupyter_server as for any APIHandler); blocking store and Docker calls run in the executor
(``_call``); errors leave as JSON ``{"message": ...}`` and MlcError becomes an HTTP status in one
function (``http_error``); refs from the URL pass ``check_ref`` before anything uses them.
"""
from __future__ import annotations

import functools
import json
import os
import re
import threading
from datetime import datetime, timezone
from http.client import responses
from typing import Any, Callable

import tornado
from jupyter_server.base.handlers import APIHandler
from jupyter_server.utils import url_path_join
from tornado.ioloop import IOLoop

from ..core.store import ACTIVE_STATUSES
from ..core.verbs import format_logs
from ..errors import EngineUnavailable, MlcError, SpecError, StoreError

API = "mlcontainer"
LABEL = "org.mlcontainer"
SNAPSHOT_LABEL = f"{LABEL}.snapshot"
NAMESPACE_LABEL = f"{LABEL}.namespace"
# The Docker backend also tags a run's container with its run id, which is the snapshot id.
RUN_LABEL = f"{LABEL}.run"
NAME_LABEL = f"{LABEL}.name"

# A snapshot id (hex), id prefix or run name, as the store accepts them: starts alphanumeric,
# then letters, digits, '_', '.', '-' (no slashes, and no ".." either).
REF_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
MAX_LIMIT = 500

# The one place where snapshot verbs that live in the core get plugged in.
# Each is ``fn(store, ref: str, options: dict) -> dict`` (a JSON-able result), called off the
# event loop; ``None`` answers 501 "not available yet". The server reads the copy in
# ``web_app.settings["mlcontainer_actions"]``, so a test or deployment can swap one in.
ACTIONS: dict[str, Callable[[Any, str, dict], dict] | None] = {
    "rerun": None,   # set in server/__init__.py from server/actions.py
    "export": None,  # likewise; it needs the server's root directory
}
ACTION_TITLES = {"rerun": "Re-run", "export": "Export"}


# -- errors: the one boundary -------------------------------------------------------------------

def is_not_found(e: StoreError) -> bool:
    """Whether a StoreError means "no such snapshot" rather than a store that cannot be read.

    The store says so in words ("No snapshot matches ...", "No snapshot is named ..."); a
    subclass named *NotFound* (should the store grow one) counts too."""
    if any("notfound" in c.__name__.lower() for c in type(e).__mro__):
        return True
    return bool(re.match(r"no snapshot (matches|is named)\b", str(e), re.IGNORECASE))


def is_ambiguous(e: StoreError) -> bool:
    return "is ambiguous" in str(e)


def http_error(e: MlcError) -> tornado.web.HTTPError:
    """MlcError -> HTTPError whose message is the error's own words."""
    if isinstance(e, EngineUnavailable):
        status = 503
    elif isinstance(e, StoreError) and is_not_found(e):
        status = 404
    elif isinstance(e, StoreError) and is_ambiguous(e):
        status = 409
    elif isinstance(e, StoreError) and str(e).startswith("Could not"):
        status = 500  # the store cannot be read or written: not the request's fault
    elif isinstance(e, (SpecError, StoreError)):
        status = 400
    else:
        status = 409  # a valid request the current state refuses (a run, a build, ...)
    return tornado.web.HTTPError(status, str(e) or type(e).__name__)


class BaseHandler(APIHandler):
    """Shared plumbing: domain objects from settings, off-loop calls, JSON in and out."""

    @property
    def store(self):
        return self.settings["mlcontainer_store"]

    @property
    def engine(self) -> Engine:
        return self.settings["mlcontainer_engine"]

    async def _call(self, fn, *args, **kwargs):
        """Run a blocking store/Docker call in the executor; MlcError becomes an HTTP error."""
        try:
            return await IOLoop.current().run_in_executor(
                None, functools.partial(fn, *args, **kwargs))
        except MlcError as e:
            raise http_error(e) from e

    def reply(self, data, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(data, default=_json_default))

    def write_error(self, status_code: int, **kwargs) -> None:
        """Every error is ``{"message": ..., "reason": ...}``; no tracebacks leave the server."""
        self.set_header("Content-Type", "application/json")
        message = responses.get(status_code, "Unknown HTTP Error")
        exc = (kwargs.get("exc_info") or (None, None, None))[1]
        if isinstance(exc, tornado.web.HTTPError):
            message = exc.log_message or message
        elif exc is not None:
            message = f"Internal error in the mlcontainer server extension: {type(exc).__name__}"
        self.finish(json.dumps({"message": message, "reason": responses.get(status_code)}))

    def ref(self, raw: str) -> str:
        return check_ref(raw)

    def body(self) -> dict:
        try:
            data = self.get_json_body()  # 400 on malformed JSON
        except UnicodeDecodeError:  # jupyter_server decodes before its try: not UTF-8 was a 500
            raise tornado.web.HTTPError(400, "The request body must be JSON in UTF-8.") from None
        if data is None:
            return {}
        if not isinstance(data, dict):
            raise tornado.web.HTTPError(400, "The request body must be a JSON object.")
        return data

    def with_paths(self, record: dict) -> dict:
        out = dict(record)
        out["notebook_path"] = notebook_path(record.get("notebook"),
                                             self.settings.get("mlcontainer_root_dir"))
        return out


def check_ref(raw: str) -> str:
    if not isinstance(raw, str) or not REF_RE.match(raw) or ".." in raw:
        raise tornado.web.HTTPError(
            400, "Invalid snapshot reference: use a snapshot id (hex) or a run name "
                 "(letters, digits, '_', '.', '-').")
    return raw


def _json_default(o):
    if isinstance(o, datetime):
        return o.isoformat()
    if isinstance(o, (set, tuple)):
        return list(o)
    if isinstance(o, bytes):
        return o.decode("utf-8", "replace")
    return str(o)


def notebook_path(notebook, root_dir) -> str | None:
    """The notebook's path relative to the server root (for opening it), or None if outside."""
    if not notebook or not isinstance(notebook, str):
        return None
    if not os.path.isabs(notebook):
        parts = notebook.replace("\\", "/").split("/")
        return None if ".." in parts else "/".join(p for p in parts if p not in ("", "."))
    if not root_dir:
        return None
    root = os.path.realpath(os.path.expanduser(root_dir))
    path = os.path.realpath(notebook)
    if os.path.commonpath([root, path]) != root:
        return None
    return os.path.relpath(path, root).replace(os.sep, "/")


def _int_arg(handler: APIHandler, name: str, default: int, lo: int, hi: int) -> int:
    raw = handler.get_query_argument(name, None)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise tornado.web.HTTPError(400, f"'{name}' must be an integer.") from None
    if not lo <= value <= hi:
        raise tornado.web.HTTPError(400, f"'{name}' must be between {lo} and {hi}.")
    return value


# -- the Docker side ------------------------------------------------------------------------------

class Engine:
    """The Docker engine as the server sees it: one cached client, errors as EngineUnavailable."""

    def __init__(self, connect: Callable | None = None, timeout: int = 10) -> None:
        self._connect = connect
        self._timeout = timeout
        self._client = None
        self._lock = threading.Lock()

    def client(self):
        with self._lock:
            if self._client is None:
                if self._connect is not None:
                    self._client = self._connect()
                else:
                    from ..backends.docker.engine import connect

                    self._client = connect(timeout=self._timeout)
            return self._client

    def _lost(self, e: Exception) -> EngineUnavailable:
        with self._lock:
            self._client = None
        from ..backends.docker.engine import HOW_TO_START

        return EngineUnavailable(f"The Docker engine stopped answering ({type(e).__name__}). "
                                 f"{HOW_TO_START}")

    def _do(self, fn):
        """Run ``fn(client)``; engine trouble -> EngineUnavailable (retried once on a new client)."""
        import docker.errors
        import requests

        for attempt in (0, 1):
            client = self.client()
            try:
                return fn(client)
            except docker.errors.NotFound:
                raise
            except (docker.errors.DockerException, requests.exceptions.RequestException,
                    OSError) as e:
                if isinstance(e, docker.errors.APIError) and e.status_code and \
                        e.status_code < 500:
                    raise MlcError(f"The Docker engine refused: {e.explanation or e}") from None
                err = self._lost(e)
                if attempt:
                    raise err from None

    def status(self) -> dict:
        try:
            info = self._do(lambda c: c.version())
        except EngineUnavailable as e:
            return {"up": False, "version": None, "message": str(e)}
        return {"up": True, "version": info.get("Version"), "api_version": info.get("ApiVersion"),
                "os": info.get("Os"), "arch": info.get("Arch"), "message": None}

    def _containers(self, client, ref: str | None = None) -> list:
        """Running containers that carry a snapshot label (each container once)."""
        seen: dict[str, object] = {}
        for label in (SNAPSHOT_LABEL, RUN_LABEL):
            flt = f"{label}={ref}" if ref else label
            for c in client.containers.list(sparse=True, filters={"label": flt}):
                seen.setdefault(c.id, c)
        return list(seen.values())

    def running(self, namespace: str | None = None) -> list[dict]:
        items = [_container_item(c) for c in self._do(self._containers)]
        if namespace:
            items = [i for i in items if i["namespace"] == namespace]
        items.sort(key=lambda i: i.get("started") or "", reverse=True)
        return items

    def stop(self, ref: str, timeout: int = 5) -> list[dict]:
        """Stop every running container of snapshot ``ref``; the stopped ones' items."""
        import docker.errors

        def stop_all(client):
            stopped = []
            for c in self._containers(client, ref):
                item = _container_item(c)
                try:
                    client.containers.get(c.id).stop(timeout=timeout)
                except docker.errors.NotFound:
                    pass  # it ended (and was removed) on its own meanwhile
                item["status"] = "stopped"
                stopped.append(item)
            return stopped

        return self._do(stop_all)


def _container_item(c) -> dict:
    a = c.attrs
    labels = a.get("Labels") or {}
    created = a.get("Created")
    started = (datetime.fromtimestamp(created, timezone.utc).isoformat()
               if isinstance(created, (int, float)) else created)
    names = a.get("Names") or []
    return {
        "id": labels.get(SNAPSHOT_LABEL) or labels.get(RUN_LABEL),
        "container": (a.get("Id") or c.id or "")[:12],
        "container_name": names[0].lstrip("/") if names else None,
        "name": labels.get(NAME_LABEL) or None,
        "namespace": labels.get(NAMESPACE_LABEL),
        "image": a.get("Image"),
        "state": a.get("State"),    # running, paused, restarting, ...
        "status": a.get("Status"),  # "Up 3 seconds"
        "started": started,
    }


# -- handlers -------------------------------------------------------------------------------------

class SnapshotsHandler(BaseHandler):
    @tornado.web.authenticated
    async def get(self):
        limit = _int_arg(self, "limit", 50, 1, MAX_LIMIT)
        offset = _int_arg(self, "offset", 0, 0, 10**9)
        filters = {k: self.get_query_argument(k, None) or None
                   for k in ("notebook", "name", "status")}

        def page():
            items = self.store.list(limit=limit, offset=offset, **filters)
            return items, self.store.count(**filters)

        items, total = await self._call(page)
        self.reply({"items": [self.with_paths(i) for i in items], "total": total,
                    "limit": limit, "offset": offset})


class SnapshotHandler(BaseHandler):
    @tornado.web.authenticated
    async def get(self, ref):
        record = await self._call(self.store.get, self.ref(ref))
        self.reply(self.with_paths(record))

    @tornado.web.authenticated
    async def delete(self, ref):
        ref = self.ref(ref)
        force = self.get_query_argument("force", "") in ("1", "true", "yes")

        def remove():
            record = self.store.get(ref)
            if record.get("status") in ACTIVE_STATUSES and not force:
                raise tornado.web.HTTPError(
                    409, f"Snapshot {record['id']} is still {record['status']}; stop it first, "
                         "or force the removal if its kernel is gone.")
            return self.store.remove(record["id"])

        removed = await self._call(remove)
        self.reply({"removed": removed})


def record_logs(store, ref: str) -> dict:
    """A snapshot's recorded output: both streams, and the text `mlcontainer logs` prints."""
    record = store.get(ref)
    return {"id": record["id"], "logs": format_logs(record),
            "stdout": str(record.get("stdout") or ""), "stderr": str(record.get("stderr") or "")}


class LogsHandler(BaseHandler):
    @tornado.web.authenticated
    async def get(self, ref):
        self.reply(await self._call(record_logs, self.store, self.ref(ref)))


class ActionHandler(BaseHandler):
    @tornado.web.authenticated
    async def post(self, ref, verb):
        ref = self.ref(ref)
        options = self.body()
        fn = self.settings.get("mlcontainer_actions", ACTIONS).get(verb)
        if fn is None:
            raise tornado.web.HTTPError(
                501, f"{ACTION_TITLES.get(verb, verb)} is not available yet in this version of "
                     "mlcontainer-magics.")
        self.reply(await self._call(fn, self.store, ref, options))


class RunningHandler(BaseHandler):
    @tornado.web.authenticated
    async def get(self):
        # This server's runs: the namespace its kernels use (MLCONTAINER_NAMESPACE), unless
        # the request asks for another one, or for all with namespace=*.
        namespace = self.get_query_argument("namespace", None) or self.settings.get(
            "mlcontainer_namespace")
        namespace = None if namespace == "*" else namespace

        def running():
            items = self.engine.running(namespace)
            for item in items:  # what the store knows about each run, if anything
                try:
                    rec = self.store.get(item["id"]) if item["id"] else None
                except MlcError:
                    rec = None
                if rec:
                    item["name"] = item["name"] or rec.get("name")
                    item["snapshot_status"] = rec.get("status")
                    item["notebook"] = rec.get("notebook")
                    item["notebook_path"] = notebook_path(
                        rec.get("notebook"), self.settings.get("mlcontainer_root_dir"))
            return items

        self.reply({"items": await self._call(running)})


class StopHandler(BaseHandler):
    @tornado.web.authenticated
    async def post(self, ref):
        ref = self.ref(ref)
        timeout = self.body().get("timeout", 5)
        if not isinstance(timeout, int) or isinstance(timeout, bool) or not 0 <= timeout <= 60:
            raise tornado.web.HTTPError(400, "'timeout' must be an integer from 0 to 60 seconds.")
        # Said before stopping, so the kernel, seeing its container end, records "stopped".
        await self._call(self._request_stop, ref)
        stopped = await self._call(self.engine.stop, ref, timeout)
        if not stopped:
            raise tornado.web.HTTPError(404, f"No running container for snapshot {ref}.")
        self.reply({"stopped": stopped})

    def _request_stop(self, ref: str) -> None:
        try:
            if self.store.get(ref).get("status") in ("building", "running"):
                self.store.update(ref, stop_requested=True)
        except MlcError:
            pass  # a container with no record of its own


class StatusHandler(BaseHandler):
    @tornado.web.authenticated
    async def get(self):
        from .. import __version__

        def status():
            engine = self.engine.status()
            try:
                store = {"root": str(getattr(self.store, "root", "")), "total": self.store.count(),
                         "message": None}
            except MlcError as e:
                store = {"root": str(getattr(self.store, "root", "")), "total": None,
                         "message": str(e)}
            return {"version": __version__, "engine": engine, "store": store}

        self.reply(await self._call(status))


class NotFoundHandler(BaseHandler):
    """Anything else under /mlcontainer/: a JSON 404, not Jupyter's HTML page."""

    def _missing(self, *args):
        raise tornado.web.HTTPError(404, f"No such mlcontainer API endpoint: {self.request.path}")

    get = tornado.web.authenticated(_missing)
    post = tornado.web.authenticated(_missing)
    put = tornado.web.authenticated(_missing)
    patch = tornado.web.authenticated(_missing)
    delete = tornado.web.authenticated(_missing)


def setup_handlers(web_app) -> None:
    base = url_path_join(web_app.settings["base_url"], API)
    ref = r"([^/]+)"
    handlers = [
        (rf"{base}/snapshots/?", SnapshotsHandler),
        (rf"{base}/snapshots/{ref}/?", SnapshotHandler),
        (rf"{base}/snapshots/{ref}/logs/?", LogsHandler),
        (rf"{base}/snapshots/{ref}/(rerun|export)/?", ActionHandler),
        (rf"{base}/running/?", RunningHandler),
        (rf"{base}/running/{ref}/stop/?", StopHandler),
        (rf"{base}/status/?", StatusHandler),
        (rf"{base}/.*", NotFoundHandler),
    ]
    web_app.add_handlers(".*$", handlers)
