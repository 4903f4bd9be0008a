"""The REST API against its OpenAPI document (mlcontainer_magics/server/openapi.yaml), fuzzed live.

A real ``jupyter server`` runs as a subprocess (127.0.0.1 only, a random token, a base_url of its
own, a tmp root and a tmp snapshot store with a few records); schemathesis generates requests
from the packaged document and checks every answer: no 5xx (but a documented 503 when the Docker
engine is away), every error JSON with a message, statuses and bodies as documented, and no
operation that works without the token. Operations that would start containers or write exports
(rerun, export) or stop containers (stop) are fuzzed against references that resolve to nothing,
and the store's records are put back before every case, so DELETE cannot starve the others.
Passes with or without a Docker engine.
"""

from __future__ import annotations

import importlib.resources
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
import schemathesis
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import AcceptedNegativeData
from schemathesis.core.parameters import ParameterLocation
from schemathesis.specs.openapi.checks import (
    missing_required_header,
    unsupported_method,
)

from mlcontainer_magics.server import handlers
from mlcontainer_magics.store import Store

BASE_URL = "/jp-api-test/"  # not "/": the document's {base_url} variable must work
MAX_EXAMPLES = 40  # fuzzing-phase examples per operation
# Operations with effects outside the store: fuzzed only against references that match nothing.
NO_EFFECT_PATHS = {"/snapshots/{ref}/rerun", "/snapshots/{ref}/export", "/running/{ref}/stop"}
# Operations that need the Docker engine; 503 is their documented answer when it is away.
ENGINE_PATHS = {
    "/running",
    "/running/{ref}/stop",
    "/snapshots/{ref}/rerun",
    "/snapshots/{ref}/export",
}

from fake_service import service_record  # noqa: E402
from test_server import RECORDS as SERVER_RECORDS  # noqa: E402

NOW = time.time()
# The REST tests' records, plus what a schema must also allow: extra fields, an absolute
# notebook path, where a snapshot ran, one more record, and a service whose server is gone.
RECORDS = [
    dict(SERVER_RECORDS[0], cell=3, custom={"anything": [1, "x"]}),
    dict(
        SERVER_RECORDS[1],
        notebook="/elsewhere/train.ipynb",
        backend="kubernetes",
        target={"context": "kind-dev", "namespace": "ml"},
    ),
    dict(SERVER_RECORDS[2], backend="docker", target={}),
    SERVER_RECORDS[3],
    {"id": "e5f6a1b2c3d4", "status": "building", "created": NOW - 5, "cell": None},
    service_record("f6a1b2c3d4e5", "ocr", "http://127.0.0.1:1"),
]


# -- the server ---------------------------------------------------------------------------------


@dataclass
class LiveServer:
    url: str  # http://127.0.0.1:<port>{BASE_URL}
    api: str  # {url}mlcontainer
    token: str
    store: Store
    root: Path
    process: subprocess.Popen
    log: Path

    @property
    def auth(self) -> dict:
        return {"Authorization": f"token {self.token}"}

    def reset_store(self) -> None:
        """Put the fixture records back as they were (a DELETE may have removed one)."""
        self.store.put_many([dict(r) for r in RECORDS])


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("api-schema")
    root, store_dir, config_dir, runtime_dir = (
        tmp / n for n in ("root", "store", "config", "runtime")
    )
    for d in (root, config_dir, runtime_dir):
        d.mkdir()
    store = Store(store_dir)
    store.put_many([dict(r) for r in RECORDS])
    # The extension is enabled here whatever the environment's config says; the cookie secret
    # and the server's runtime files go to tmp, not to the user's runtime folder.
    (config_dir / "jupyter_server_config.json").write_text(
        json.dumps({"ServerApp": {"jpserver_extensions": {"mlcontainer_magics": True}}})
    )
    env = dict(
        os.environ,
        MLCONTAINER_STORE=str(store_dir),
        JUPYTER_CONFIG_DIR=str(config_dir),
        JUPYTER_RUNTIME_DIR=str(runtime_dir),
        PYTHONUNBUFFERED="1",
    )
    token = uuid.uuid4().hex
    log = tmp / "server.log"
    for _attempt in range(3):  # a free port can be taken between choosing and binding it
        port = _free_port()
        cmd = [
            sys.executable,
            "-m",
            "jupyter_server",
            "--no-browser",
            "--allow-root",
            f"--port={port}",
            "--port-retries=0",
            "--ServerApp.ip=127.0.0.1",
            f"--IdentityProvider.token={token}",
            f"--ServerApp.root_dir={root}",
            f"--ServerApp.base_url={BASE_URL}",
        ]
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                cmd,
                env=env,
                cwd=tmp,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        url = f"http://127.0.0.1:{port}{BASE_URL}"
        live = LiveServer(
            url=url,
            api=f"{url}mlcontainer",
            token=token,
            store=store,
            root=root,
            process=proc,
            log=log,
        )
        if _wait_until_up(live):
            break
        _stop(proc)
    else:
        pytest.fail("the Jupyter server did not start:\n" + log.read_text()[-4000:])
    try:
        yield live
    finally:
        _stop(proc)
        store.close()


def _wait_until_up(live: LiveServer, timeout: float = 90) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if live.process.poll() is not None:
            return False
        try:
            r = requests.get(f"{live.api}/status", headers=live.auth, timeout=5)
            if r.status_code == 200:
                return True
        except requests.RequestException:
            pass
        time.sleep(0.3)
    return False


# -- the document ---------------------------------------------------------------------------------


def spec_path() -> Path:
    """The document as the installed package ships it."""
    resource = importlib.resources.files("mlcontainer_magics.server") / "openapi.yaml"
    assert resource.is_file(), "openapi.yaml is not part of the mlcontainer_magics package"
    return Path(str(resource))


def spec() -> dict:
    return yaml.safe_load(spec_path().read_text(encoding="utf-8"))


def documented_operations() -> set[tuple[str, str]]:
    methods = {"get", "put", "post", "delete", "patch", "head", "options"}
    return {
        (m.upper(), path) for path, item in spec()["paths"].items() for m in item if m in methods
    }


# Loaded eagerly, so each operation is a test of its own; the live server's address and token
# are given at call time. (schemathesis.pytest.from_fixture, the lazy loader, breaks on pytest
# 9.2's Node, which has no `_nodeid` any more.)
schema = schemathesis.openapi.from_path(spec_path())
# Unknown query parameters are ignored, by design (Jupyter itself reads `?token=` on any URL):
# no negative case is made of one.
schema.config.generation.update(allow_extra_parameters=False)


@schema.hook
def filter_failure(context, failure, case, response):
    """Keep "invalid data accepted" only if the server really read invalid data.

    Tornado reads a query value with control characters turned to spaces and whitespace
    stripped, and an empty value means the default; `int()` takes " 7", "+7" or "1_0". A
    "negative" query that reads as a valid one there is valid, and its 200 is right (as it is
    for a removed Authorization header: the token is sent with every case anyway)."""
    if not isinstance(failure, AcceptedNegativeData) or response.status_code >= 300:
        return True
    negative = (
        {
            location
            for location, component in case.meta.components.items()
            if component.mode.is_negative
        }
        if case.meta
        else set()
    )
    if negative - {ParameterLocation.QUERY, ParameterLocation.HEADER}:
        return True
    return not _query_reads_valid(case.operation, response.request.url)


def _query_reads_valid(operation, url: str) -> bool:
    params = {
        p["name"]: p["schema"]
        for p in spec()["paths"][operation.path][operation.method.lower()].get("parameters", [])
        if p["in"] == "query"
    }
    query = parse_qs(urlsplit(url).query, keep_blank_values=True)
    for name, values in query.items():
        if name not in params:
            continue  # ignored by the server
        value = re.sub(r"[\x00-\x08\x0e-\x1f]", " ", values[-1]).strip()  # the last one wins
        param = params[name]
        if value == "":
            continue
        if param.get("type") == "integer":
            try:
                number = int(value)
            except ValueError:
                return False
            if not param.get("minimum", number) <= number <= param.get("maximum", number):
                return False
        elif "enum" in param and value not in param["enum"]:
            return False
    return True


# -- checks beyond the document's (run as schemathesis checks, so failures come with a repro) ----


def no_server_error(ctx, response, case):
    """No 5xx, but the 503 the document gives an engine-bound operation when the engine is away."""
    if response.status_code < 500:
        return
    engine_down = (
        response.status_code == 503
        and case.operation.path in ENGINE_PATHS
        and "docker" in _message(response).lower()
    )
    assert engine_down, (
        f"{response.status_code} from {case.method} {case.formatted_path}: {response.text[:500]}"
    )


def errors_are_json(ctx, response, case):
    """Every 4xx/5xx is JSON with a non-empty ``message`` string."""
    if response.status_code < 400:
        return
    ctype = response.headers.get("content-type", [""])
    ctype = ctype[0] if isinstance(ctype, list) else ctype
    assert ctype.startswith("application/json"), f"{response.status_code} as {ctype!r}"
    assert _message(response).strip(), f"{response.status_code} without a message"


def _message(response) -> str:
    try:
        data = json.loads(response.content)
    except ValueError:
        raise AssertionError(
            f"{response.status_code} body is not JSON: {response.text[:300]!r}"
        ) from None
    assert isinstance(data, dict) and isinstance(data.get("message"), str), data
    return data["message"]


def _resolves_to_nothing(ref) -> str:
    """A valid ref stays valid but can name no record ("zz" is no hex prefix, nor a name here)."""
    if isinstance(ref, str) and handlers.REF_RE.match(ref) and ".." not in ref:
        return "zz" + ref[:126]
    return ref  # an invalid one is refused (400) before anything looks it up


@settings(
    max_examples=MAX_EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck)
)
@schema.parametrize()
def test_api_conforms_to_its_document(case, server):
    if case.operation.path in NO_EFFECT_PATHS and isinstance(case.path_parameters, dict):
        case.path_parameters["ref"] = _resolves_to_nothing(case.path_parameters.get("ref"))
    server.reset_store()
    # Excluded: not_a_server_error (no_server_error below is the same, but for the documented
    # 503); missing_required_header, which wants 401 for a missing Authorization header where
    # Jupyter answers 403, as documented (test_every_operation_refuses_without_the_token); and
    # unsupported_method, which wants an `Allow` header on 405, which tornado does not send
    # (the 405 itself is JSON with a message: errors_are_json is run on the real requests).
    case.call_and_validate(
        base_url=server.api,
        headers=server.auth,
        timeout=60,
        excluded_checks=[not_a_server_error, missing_required_header, unsupported_method],
        additional_checks=[no_server_error, errors_are_json],
    )


# -- authentication -------------------------------------------------------------------------------


@pytest.mark.parametrize("operation", sorted(documented_operations()), ids=" ".join)
@pytest.mark.parametrize("auth", [None, "token wrong-token", "Bearer nope"])
def test_every_operation_refuses_without_the_token(server, operation, auth):
    """Without a valid token: 403 with a JSON message, no redirect to a login page, no effect."""
    server.reset_store()
    method, path = operation
    url = server.api + path.replace("{ref}", "a1b2c3d4e5f6")
    headers = {"Authorization": auth} if auth else {}
    kwargs = {"json": {}} if method == "POST" else {}
    response = requests.request(
        method, url, headers=headers, allow_redirects=False, timeout=30, **kwargs
    )
    assert response.status_code == 403, (response.status_code, response.headers, response.text)
    assert response.headers["Content-Type"].startswith("application/json")
    assert response.json()["message"]
    assert server.store.count() == len(RECORDS)  # nothing was removed or started


def test_a_documented_200_with_the_token(server):
    """The counterpart of the 403s: the same token header is what the document declares."""
    security = spec()["components"]["securitySchemes"]["token"]
    assert (security["type"], security["in"], security["name"]) == (
        "apiKey",
        "header",
        "Authorization",
    )
    server.reset_store()
    response = requests.get(f"{server.api}/snapshots", headers=server.auth, timeout=30)
    assert response.status_code == 200 and response.json()["total"] == len(RECORDS)


@pytest.mark.parametrize(
    "path", ["/snapshots/zz-none/rerun", "/snapshots/zz-none/export", "/running/zz-none/stop"]
)
def test_a_body_that_is_not_utf8_is_a_400(server, path):
    """Found by the fuzzing: jupyter_server's get_json_body decodes outside its try (was a 500)."""
    response = requests.post(
        server.api + path,
        data=b'{"x": "\xff\xfe"}',
        timeout=30,
        headers={**server.auth, "Content-Type": "application/json"},
    )
    assert response.status_code == 400, response.text
    assert "UTF-8" in response.json()["message"]


# -- the document cannot drift from the routes -------------------------------------------------


class _App:
    def __init__(self):
        self.settings = {"base_url": "/"}
        self.handlers = []

    def add_handlers(self, host, handlers_):
        self.handlers.extend(handlers_)


def registered_operations() -> set[tuple[str, str]]:
    """(METHOD, path template) of every route ``setup_handlers`` registers, but the JSON 404."""
    app = _App()
    handlers.setup_handlers(app)
    prefix = "/" + handlers.API
    assert app.handlers[-1][1] is handlers.NotFoundHandler  # the catch-all stays last
    ops = set()
    for pattern, cls in app.handlers[:-1]:
        assert pattern.startswith(prefix), pattern
        template = pattern[len(prefix) :].removesuffix("/?").replace("([^/]+)", "{ref}")
        templates = [template]
        while any(re.search(r"\(([\w|]+)\)", t) for t in templates):  # (a|b) -> a, b
            templates = [
                re.sub(r"\(([\w|]+)\)", alt, t, count=1)
                for t in templates
                for alt in re.search(r"\(([\w|]+)\)", t).group(1).split("|")
            ]
        methods = [m for m in ("get", "post", "put", "patch", "delete") if m in vars(cls)]
        assert methods, cls
        for t in templates:
            assert re.fullmatch(r"[\w/{}]+", t), f"unexpected route pattern {pattern!r}"
            ops.update((m.upper(), t) for m in methods)
    return ops


def test_the_document_covers_every_route():
    registered = registered_operations()
    documented = documented_operations()
    assert registered == documented, {
        "not documented": sorted(registered - documented),
        "documented, not served": sorted(documented - registered),
    }


def test_the_document_is_valid_openapi():
    schemathesis.openapi.from_path(spec_path()).validate()
    assert spec()["openapi"].startswith("3.0.")


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="aZ09_.-/ %é", max_size=130))
def test_the_documented_ref_pattern_is_check_ref(ref):
    param = spec_ref_schema()
    documented = (
        param["minLength"] <= len(ref) <= param["maxLength"]
        and re.search(param["pattern"], ref) is not None
    )
    try:
        handlers.check_ref(ref)
        accepted = True
    except Exception:  # noqa: BLE001 - tornado.web.HTTPError(400)
        accepted = False
    assert documented == accepted, ref


_REF_SCHEMA: dict = {}


def spec_ref_schema() -> dict:
    if not _REF_SCHEMA:
        _REF_SCHEMA.update(spec()["components"]["parameters"]["Ref"]["schema"])
    return _REF_SCHEMA
