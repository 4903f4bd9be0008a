"""REST handlers for the sidebar, under ``{base_url}/mlcontainer/``.

    GET    snapshots                 ?limit=&offset=&notebook=&name=&status=  -> {items, total, ...}
    GET    snapshots/{ref}           the full record
    GET    snapshots/{ref}/logs      {id, logs, stdout, stderr}
    DELETE snapshots/{ref}           {removed} (?force=1 for a building/running one)
    POST   snapshots/{ref}/rerun     run it again from its lock ({"verify": true} checks outputs;
                                     {"pipeline": true} re-runs every step that led to it)
    POST   snapshots/{ref}/export    export under <root>/mlcontainer-exports/ ({"tar": true};
                                     {"pipeline": true} exports every step that led to it)
    GET    lineage/{ref}             the steps and values that led to it, and what took its values
    GET    running                   {items, engine}: containers the product labelled, live
    POST   running/{ref}/stop        {stopped}: stops the running container(s) of a snapshot
    GET    services                  {items}: snapshots serving now, with what each server says
    GET    status                    {version, engine: {up, version, message}, store}

Rules kept here: every verb is ``@tornado.web.authenticated`` (writes are XSRF-checked by
jupyter_server as for any APIHandler); handlers talk only to the core (the store, runs, verbs)
and to backends through their contract; blocking calls run in the executor (``_call``); errors
leave as JSON ``{"message": ...}``, and an MlcError's class picks its HTTP status in one table
(``HTTP_STATUS``); refs from the URL pass ``check_ref`` before anything uses them.
"""

from __future__ import annotations

import functools
import json
import os
import re
import time
from datetime import datetime
from http.client import responses
from typing import Any, Callable

import tornado
from jupyter_server.base.handlers import APIHandler
from jupyter_server.utils import url_path_join
from tornado.ioloop import IOLoop

from ..backends import Backends
from ..core import lineage, runs, verbs
from ..core import services as core_services
from ..errors import (
    Conflict,
    MlcError,
    NotFound,
    SnapshotNotFound,
    SpecError,
    StoreError,
    StoreUnavailable,
    Unavailable,
)
from . import services

API = "mlcontainer"

# A snapshot id (hex), id prefix or run name, as the store accepts them: starts alphanumeric,
# then letters, digits, '_', '.', '-' (no slashes, and no ".." either).
REF_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
MAX_LIMIT = 500

# The one place where snapshot verbs that live in the core get plugged in.
# Each is ``fn(store, ref: str, options: dict) -> dict`` (a JSON-able result), called off the
# event loop; ``None`` answers 501 "not available yet". The server reads the copy in
# ``web_app.settings["mlcontainer_actions"]``, so a test or deployment can swap one in.
ACTIONS: dict[str, Callable[[Any, str, dict], dict] | None] = {
    "rerun": None,  # set in server/__init__.py from server/actions.py
    "export": None,  # likewise; it needs the server's root directory
}
ACTION_TITLES = {"rerun": "Re-run", "export": "Export"}


# -- errors: the one boundary -------------------------------------------------------------------

# The first class in this order that an error is an instance of picks its status.
HTTP_STATUS: tuple[tuple[type[MlcError], int], ...] = (
    (NotFound, 404),
    (Conflict, 409),
    (Unavailable, 503),
    (StoreUnavailable, 500),  # the store cannot be read or written: not the request's fault
    (SpecError, 400),
    (StoreError, 400),
)
DEFAULT_STATUS = 409  # a valid request the current state refuses (a run, a build, ...)


def http_error(e: MlcError) -> tornado.web.HTTPError:
    """MlcError -> HTTPError whose message is the error's own words."""
    status = next((code for cls, code in HTTP_STATUS if isinstance(e, cls)), DEFAULT_STATUS)
    return tornado.web.HTTPError(status, str(e) or type(e).__name__)


class BaseHandler(APIHandler):
    """Shared plumbing: domain objects from settings, off-loop calls, JSON in and out."""

    @property
    def store(self):
        return self.settings["mlcontainer_store"]

    @property
    def backends(self) -> Backends:
        return self.settings["mlcontainer_backends"]

    async def _call(self, fn, *args, **kwargs):
        """Run a blocking store/Docker call in the executor; MlcError becomes an HTTP error."""
        try:
            return await IOLoop.current().run_in_executor(
                None, functools.partial(fn, *args, **kwargs)
            )
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
        out["notebook_path"] = notebook_path(
            record.get("notebook"), self.settings.get("mlcontainer_root_dir")
        )
        return out


def check_ref(raw: str) -> str:
    if not isinstance(raw, str) or not REF_RE.match(raw) or ".." in raw:
        raise tornado.web.HTTPError(
            400,
            "Invalid snapshot reference: use a snapshot id (hex) or a run name "
            "(letters, digits, '_', '.', '-').",
        )
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


# -- handlers -------------------------------------------------------------------------------------


class SnapshotsHandler(BaseHandler):
    @tornado.web.authenticated
    async def get(self):
        limit = _int_arg(self, "limit", 50, 1, MAX_LIMIT)
        offset = _int_arg(self, "offset", 0, 0, 10**9)
        filters = {
            k: self.get_query_argument(k, None) or None for k in ("notebook", "name", "status")
        }

        def page():
            items = self.store.list(limit=limit, offset=offset, **filters)
            maps = self.store.map_summaries(i["id"] for i in items)
            items = [dict(i, map=maps.get(i["id"])) for i in items]
            return items, self.store.count(**filters)

        items, total = await self._call(page)
        self.reply(
            {
                "items": [self.with_paths(i) for i in items],
                "total": total,
                "limit": limit,
                "offset": offset,
            }
        )


class SnapshotHandler(BaseHandler):
    @tornado.web.authenticated
    async def get(self, ref):
        record = await self._call(self.store.get, self.ref(ref))
        self.reply(self.with_paths(record))

    @tornado.web.authenticated
    async def delete(self, ref):
        ref = self.ref(ref)
        force = self.get_query_argument("force", "") in ("1", "true", "yes")
        removed = await self._call(verbs.remove_one, self.store, ref, force=force)
        self.reply({"removed": removed})


def record_logs(store, ref: str) -> dict:
    """A snapshot's recorded output: both streams, and the text `mlcontainer logs` prints."""
    record = store.get(ref)
    return {
        "id": record["id"],
        "logs": verbs.format_logs(record),
        "stdout": str(record.get("stdout") or ""),
        "stderr": str(record.get("stderr") or ""),
    }


class LogsHandler(BaseHandler):
    @tornado.web.authenticated
    async def get(self, ref):
        self.reply(await self._call(record_logs, self.store, self.ref(ref)))


def record_lineage(store, ref: str) -> dict:
    """``lineage_json`` of the snapshot's graph (the steps that led to it, in order), plus
    ``children`` and ``child_edges``: the snapshots that took its values, so that a view of a
    pipeline's first step can lead on to the next."""
    graph = lineage.graph(store, ref)
    children = []
    for child in store.children(graph.root):
        try:
            children.append(store.get(child["id"]))
        except SnapshotNotFound:
            continue  # removed since it was listed
    return {**lineage.lineage_json(graph), **lineage.children_json(graph.root, children)}


class LineageHandler(BaseHandler):
    @tornado.web.authenticated
    async def get(self, ref):
        self.reply(await self._call(record_lineage, self.store, self.ref(ref)))


class ActionHandler(BaseHandler):
    @tornado.web.authenticated
    async def post(self, ref, verb):
        ref = self.ref(ref)
        options = self.body()
        fn = self.settings.get("mlcontainer_actions", ACTIONS).get(verb)
        if fn is None:
            raise tornado.web.HTTPError(
                501,
                f"{ACTION_TITLES.get(verb, verb)} is not available yet in this version of "
                "mlcontainer-magics.",
            )
        self.reply(await self._call(fn, self.store, ref, options))


class RunningHandler(BaseHandler):
    @tornado.web.authenticated
    async def get(self):
        # This server's runs: the namespace its kernels use (MLCONTAINER_NAMESPACE), unless
        # the request asks for another one, or for all with namespace=*.
        namespace = self.get_query_argument("namespace", None) or self.settings.get(
            "mlcontainer_namespace"
        )

        def running():
            backend = self.backends.get(namespace=None if namespace == "*" else namespace)
            items = [r.to_dict() for r in backend.running(all_namespaces=namespace == "*")]
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
                        rec.get("notebook"), self.settings.get("mlcontainer_root_dir")
                    )
            return items

        self.reply({"items": await self._call(running)})


class StopHandler(BaseHandler):
    @tornado.web.authenticated
    async def post(self, ref):
        ref = self.ref(ref)
        timeout = self.body().get("timeout", 5)
        if not isinstance(timeout, int) or isinstance(timeout, bool) or not 0 <= timeout <= 60:
            raise tornado.web.HTTPError(400, "'timeout' must be an integer from 0 to 60 seconds.")

        def stop():
            try:  # the backend the snapshot runs on; a run with no record: this server's
                backend = self.backends.for_record(self.store.get(ref))
            except NotFound:
                backend = self.backends.get(namespace=self.settings.get("mlcontainer_namespace"))
            live = backend.running(all_namespaces=True, services=True)
            items = [r.to_dict() for r in live if r.id == ref]
            if not runs.request_stop(self.store, backend, ref, grace=timeout):
                return []
            return [dict(item, status="stopped") for item in items]

        stopped = await self._call(stop)
        if not stopped:
            raise tornado.web.HTTPError(404, f"No running container for snapshot {ref}.")
        self.reply({"stopped": stopped})


class ServicesHandler(BaseHandler):
    @tornado.web.authenticated
    async def get(self):
        # Services are stopped through running/{id}/stop: a service is a run that serves.
        records = await self._call(core_services.serving_records, self.store)
        items = await services.describe(records, now=time.time())
        self.reply({"items": [self.with_paths(i) for i in items]})


class StatusHandler(BaseHandler):
    @tornado.web.authenticated
    async def get(self):
        from .._version import __version__

        def status():
            engine = self.backends.get().status()
            try:
                store = {
                    "root": str(getattr(self.store, "root", "")),
                    "total": self.store.count(),
                    "message": None,
                }
            except MlcError as e:
                store = {
                    "root": str(getattr(self.store, "root", "")),
                    "total": None,
                    "message": str(e),
                }
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
        (rf"{base}/lineage/{ref}/?", LineageHandler),
        (rf"{base}/running/?", RunningHandler),
        (rf"{base}/running/{ref}/stop/?", StopHandler),
        (rf"{base}/services/?", ServicesHandler),
        (rf"{base}/status/?", StatusHandler),
        (rf"{base}/.*", NotFoundHandler),
    ]
    web_app.add_handlers(".*$", handlers)
