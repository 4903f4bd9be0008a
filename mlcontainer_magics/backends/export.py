"""A snapshot as artifacts other tools run: a plain Docker build context that rebuilds the
environment offline and reruns the cell, and (``--k8s``) a Kubernetes Job manifest. With
``--serve`` the image serves the cell's function over HTTP instead (``runner.py --http``), and
``--k8s`` writes the Deployment and Service that serve it on a cluster; ``deploy_snapshot``
applies those on the cluster itself (``mlcontainer deploy``).

It draws on both backends (the Docker build's pure renderers, the Kubernetes object builders)
and asks the snapshot's backend only for what the contract declares (wheels, a saved image).
"""

from __future__ import annotations

import ast
import json
import os
import shlex
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from ..config import KubernetesConfig
from ..core.backend import Backend
from ..core.events import no_events
from ..core.formatting import format_size, plural
from ..core.secrets import resolve
from ..core.services import services_of
from ..core.snapshots import spec_from_record
from ..core.spec import parse_serve, serve_manifest
from ..errors import SpecError
from ..runner import OUT_DIR, SERVE_PORT, runner_source
from .docker import build as render
from .kubernetes.export import write_job_manifest, write_service_manifest
from .kubernetes.objects import settings_from, with_secrets

# -- export -----------------------------------------------------------------------------------

EXPORT_README = """# Snapshot {id}{name}

A containerized notebook cell, exported by mlcontainer-magics. Rebuild and rerun it with Docker
alone:

    docker build -t snapshot-{id} .
    docker run --rm snapshot-{id}

- `Dockerfile` starts from `{base}` (image id `{base_id}` when recorded), installs the Debian
  packages and the exact pins of `requirements.lock` (with hashes) from `wheels/`, offline.
- `mlc/cell.py` is the cell's code; `mlc/in/` holds the values it received; `mlc/runner.py`
  runs it as a notebook would (standard library only).
- Recorded stdout: `expected-stdout.txt`.
{data}{secrets}"""

SERVE_README = """# Service {service}: snapshot {snapshot}

A containerized notebook cell that serves its function `{entry}` over HTTP, exported by
mlcontainer-magics. Build and run it with Docker alone:

    docker build -t service-{snapshot} .
    docker run --rm -p 127.0.0.1:{port}:{port} service-{snapshot}

Once the cell has run (it prints a `serving:` line), call it:

    curl -X POST -H 'Content-Type: application/json' -d '[1, 2, 3]' http://127.0.0.1:{port}/{entry}

- `POST /{entry}` (also `POST /`): the body is the function's argument, decoded by its
  Content-Type: `application/json`, `application/x-npy` (numpy .npy),
  `application/vnd.apache.parquet` (a pandas DataFrame), anything else as raw bytes. The
  answer comes back the same way; a JSON request gets JSON.
- `GET /healthz`: `{{"status": "ok"}}` once the cell has run (the image's HEALTHCHECK asks it);
  `GET /metadata`: the snapshot ({snapshot}), the lock digest, the function's signature and
  how many requests it served.
- Bad input gets a 4xx JSON error, an exception in `{entry}` a 500 JSON error with its
  traceback; the server stays up. It runs as an unprivileged user (uid 1000) and ends
  cleanly on SIGTERM (`docker stop`).
- `Dockerfile` starts from `{base}` (image id `{base_id}` when recorded), installs the Debian
  packages and the exact pins of `requirements.lock` (with hashes) from `wheels/`, offline.
- `mlc/cell.py` is the cell's code, run once at start; `mlc/in/` holds the values it
  received; `mlc/runner.py` runs and serves it (standard library only); `mlc/manifest.json`
  names the service (its `serve` block).
{data}{secrets}"""

MAP_README = """# Snapshot {id}{name}: a map of {count} items

A containerized notebook cell that ran once per item of the notebook value `{map_name}`
(`%%containerize --map {map_name}`), exported by mlcontainer-magics. Each container runs one
item, the one `MLC_INDEX` says (0 to {last}). Build the image with Docker alone:

    docker build -t snapshot-{id} .

Run one item, e.g. item 3 (its `--out` values land in the mounted folder):

    mkdir -p out && chmod 0777 out
    docker run --rm -e MLC_INDEX=3 -v "$PWD/out:/mlc/out" snapshot-{id}

Run all of them, at most {parallel} at once (`MLC_PARALLEL=8 sh run-items.sh` for another
bound; `MLC_MAP_IMAGE` names another image):

    sh run-items.sh

Each item's `--out` values land in `items/NNNNN/` (NNNNN its position, 00000 to {last_dir}),
beside what it printed (`stdout.txt`, `stderr.txt`) and its exit status (`exit-code`); the
script says which items failed and ends with status 1 if any did. Without `MLC_INDEX` the
image runs nothing and says so.

{retried} (`MLC_RETRIES=2 sh run-items.sh` for another number), each attempt in a
fresh container with its `items/NNNNN/` emptied first; `attempts` there says how many it took,
and the script says each retry on stderr. An interrupt (Ctrl-C) is not retried.

- `Dockerfile` starts from `{base}` (image id `{base_id}` when recorded), installs the Debian
  packages and the exact pins of `requirements.lock` (with hashes) from `wheels/`, offline.
- `mlc/cell.py` is the cell's code; `mlc/in/{map_name}/` holds the items, one file each, and
  `mlc/in/` the values every item shares; `mlc/manifest.json` lists the items (its `map`
  block) with their digests; `mlc/runner.py` runs the cell on one item as the notebook did
  (standard library only).
- `snapshot.json` is the map's record: its `map` block has each item's recorded output digests
  (`--out` values) and how it ended; recorded stdout of all items: `expected-stdout.txt`.
{data}{secrets}"""

DATA_COPIED = """\
- Mounted inputs travel in `data/` (at the paths the cell read them); `DATA.md` lists
  their recorded digests.
"""
DATA_LISTED = """\
- Some mounted inputs were too large to copy (over {limit}): `DATA.md` lists them with
  their digests; mount them when you run it, e.g. `docker run --rm {mounts} snapshot-{id}`.
"""
SECRETS_NOTE = """\
- The cell used the secrets {names}, whose values are never recorded: pass them with
  `docker run -e NAME=...` (and mount a folder holding NAME as /run/secrets/NAME if it
  reads the file).
"""


def export(
    store,
    ref: str,
    dest,
    backend: Backend,
    *,
    tar: bool = False,
    k8s: bool = False,
    k8s_config: KubernetesConfig | None = None,
    data_limit: int = 100 * 2**20,
    serve: bool = False,
    entry: str | None = None,
    service: str | None = None,
    replicas: int | None = None,
) -> Path:
    """Write a folder that rebuilds and reruns the snapshot with plain `docker build`/`run`;
    with ``k8s``, also the Job that reruns it on a cluster (placed as ``k8s_config`` says).
    Mounted inputs up to ``data_limit`` bytes in all are copied in; larger ones are listed.

    With ``serve``, the image serves the cell's ``entry`` function on port 8080 (a snapshot
    that was a service keeps its name and entry; any other whose cell defines the function
    serves it too), and ``k8s`` writes ``service.yaml`` (Deployment and Service, ``replicas``
    pods) instead of the Job."""
    record = store.get(ref)
    serving = serve_block(record, service, entry) if serve else None
    dest = check_dest(dest)
    spec = export_spec(record)
    folder = store.artifacts_dir(record["id"])

    mapped = _map_block(folder) if serving is None else None

    def write(staging: Path) -> None:
        _write_run_folder(staging / "mlc", record, spec, folder, serving)
        listed = _write_build_context(
            staging,
            record,
            spec,
            backend,
            data_limit,
            serving,
            readme=MAP_README if mapped is not None else None,
        )
        if mapped is not None:
            script = staging / "run-items.sh"
            script.write_text(run_items_script(record, spec, mapped, listed))
            script.chmod(0o755)
        if tar:
            backend.save_image(
                record.get("env_image_id") or spec.env_spec.base_image, staging / "image.tar"
            )
        if k8s:
            config = k8s_config or KubernetesConfig()
            settings = settings_from(config, config.k8s_namespace or "default")
            if serving is not None:
                write_service_manifest(
                    record,
                    with_secrets(spec, {}),
                    staging,
                    settings,
                    serving,
                    replicas=replicas or _recorded_replicas(record),
                )
            else:
                write_job_manifest(record, with_secrets(spec, {}), staging, settings)

    return write_staged(dest, write)


def check_dest(dest) -> Path:
    """``dest`` as a Path, refused (SpecError) unless it is new or an empty folder."""
    dest = Path(dest).expanduser()
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        what = "is not empty" if dest.is_dir() else "is a file"
        raise SpecError(f"{dest} exists and {what}; export into a new folder.")
    return dest


def write_staged(dest: Path, write) -> Path:
    """Call ``write(staging)`` on a folder beside ``dest`` and rename it to ``dest`` once
    complete: an export that fails half-way (or is interrupted) leaves nothing behind."""
    staging = dest.with_name(f".{dest.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        staging.mkdir(parents=True)
        write(staging)
        if dest.exists():
            dest.rmdir()
        staging.rename(dest)
    except BaseException as e:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(e, OSError):
            raise SpecError(
                f"Cannot write the export to {dest}: {e.strerror or e}. Choose a "
                "new folder in a place you may write to."
            ) from None
        raise
    return dest


def export_spec(record: dict):
    """The RunSpec of a snapshot as an export needs it: secret values are never recorded, and
    an export carries none (empty stand-ins). StoreError for a record with no spec."""
    recorded = record.get("spec")
    env = recorded.get("env", []) if isinstance(recorded, dict) else []
    return spec_from_record(record, environ={k: "" for k, _ in env})


def serve_block(record: dict, name: str | None = None, entry: str | None = None) -> dict:
    """The manifest's ``serve`` block for serving snapshot ``record``: the name and entry it
    was served with (a service's snapshot), else ``name`` (default: the snapshot's name, or
    its id) and ``entry`` (default ``predict``). SpecError when the cell defines no such
    function: a snapshot of any run whose cell defines it can be served."""
    was = (record.get("spec") or {}).get("serve") or record.get("service") or {}
    serve = parse_serve(
        name or was.get("name") or record.get("name") or record["id"],
        entry=entry or was.get("entry"),
    )
    assert serve is not None, "a name was given"
    if not defines(record.get("code") or "", serve.entry):
        raise SpecError(
            f"The cell of snapshot {record['id']} defines no function {serve.entry}(...), so "
            "there is nothing to serve. Choose the function with --entry NAME, or serve a cell "
            f"that defines `def {serve.entry}(x): ...`."
        )
    return serve_manifest(serve, record["id"], record.get("lock"))


def parse_replicas(value) -> int | None:
    """--replicas: a number of pods (as --serve takes it); None when not given."""
    if not value:
        return None
    serve = parse_serve("replicas", replicas=value)
    assert serve is not None, "a name was given"
    return serve.replicas


def defines(code: str, name: str) -> bool:
    """Whether the cell binds ``name`` at its top level (a def, an assignment, an import,
    also under if/try/with): what the server calls. A cell that does not parse is not judged
    here (its run says what is wrong)."""
    try:
        todo: list[ast.AST] = list(ast.parse(code).body)
    except (SyntaxError, ValueError):
        return True
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            if node.name == name:
                return True
            continue  # names bound inside are not the module's
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store) and node.id == name:
            return True
        if isinstance(node, ast.alias) and (node.asname or node.name.split(".")[0]) == name:
            return True
        todo.extend(ast.iter_child_nodes(node))
    return False


def _recorded_replicas(record: dict) -> int:
    was = (record.get("spec") or {}).get("serve") or record.get("service") or {}
    return int(was.get("replicas") or 1)


def _write_run_folder(
    mlc: Path,
    record: dict,
    spec,
    kept: Path,
    serving: dict | None = None,
    *,
    values: bool = True,
    host: dict | None = None,
) -> None:
    """mlc/: the runner, the cell, the values it received (without ``values``: none, they
    come from elsewhere at run time) and its manifest, as a run has them (with ``serving``,
    the manifest's ``serve`` block). ``host`` is what the manifest says the receiving side
    reads, which decides the formats of the --out values (default: plain data only)."""
    (mlc / "out").mkdir(parents=True)
    (mlc / "out" / ".keep").write_bytes(b"")
    (mlc / "runner.py").write_bytes(runner_source())
    (mlc / "cell.py").write_text(record["code"], encoding="utf-8")
    if values and (kept / "in").is_dir():
        shutil.copytree(kept / "in", mlc / "in")
    manifest: dict = {
        "inputs": dict(record.get("inputs") or {}),  # a copy: a map's item input leaves it
        "outputs": list(spec.outputs),
        "host": host or {"python": "", "numpy": False, "pyarrow": False},
    }
    if serving is not None:
        manifest["serve"] = serving
    mapped = _map_block(kept)
    if mapped is not None:  # each container runs one item: as the map ran (core/maps.py)
        manifest["map"] = mapped
        manifest["inputs"].pop(mapped.get("name"), None)
    (mlc / "manifest.json").write_text(json.dumps(manifest, indent=2))


def _map_block(kept: Path) -> dict | None:
    """The ``map`` block of a map's manifest, as its snapshot kept it; None for a run."""
    try:
        return json.loads((kept / "manifest.json").read_text()).get("map")
    except (OSError, ValueError):
        return None


def docker_run_options(spec, record: dict, listed=None) -> list[str]:
    """``docker run`` options that make a container as the run's was recorded: its network,
    resources and environment (a secret's value from the caller's environment, never here),
    and the mounted inputs too large to travel with it (``listed``)."""
    out: list[str] = []
    if spec.network == "none":
        out += ["--network", "none"]
    if spec.cpus is not None:
        out += ["--cpus", str(spec.cpus)]
    if spec.memory is not None:
        out += ["--memory", str(spec.memory)]
    if spec.gpus is not None:
        out += ["--gpus", shlex.quote(str(spec.gpus))]
    recorded = dict((record.get("spec") or {}).get("env") or [])
    for key, value in spec.env:
        secret = key in spec.secrets or recorded.get(key) == "***"
        out += ["-e", shlex.quote(key if secret else f"{key}={value}")]
    for key in spec.secrets:
        if key not in dict(spec.env):
            out += ["-e", shlex.quote(key)]
    for m in listed or ():
        out += ["-v", shlex.quote(f"{m['source']}:{m['target']}:ro")]
    return out


def run_items_script(record: dict, spec, mapped: dict, listed=None) -> str:
    """run-items.sh of an exported map: every item with plain ``docker run --rm``, at most
    the recorded --parallel at once (``xargs -P``), item NNNNN's --out values into
    ``items/NNNNN/`` (mounted as /mlc/out), with what it printed and its exit status.

    An item that exits non-zero runs again, up to the recorded --retries times (MLC_RETRIES
    overrides it), each attempt in a fresh container with its folder emptied first, as the
    magic's map retries it (core/backend.py ``_ItemPool._item``); ``items/NNNNN/attempts``
    says how many it took. An interrupt (SIGINT, SIGTERM) ends the item and is not retried,
    as a stopped map's items are not."""
    count = int(mapped.get("count") or len(mapped.get("items") or []))
    parallel = _recorded_parallel(record)
    default = str(parallel) if parallel else "$(nproc 2>/dev/null || echo 2)"
    retries = _recorded_retries(record)
    options = " ".join(docker_run_options(spec, record, listed))
    finished = (
        "the item done: its outputs are"
        if count == 1
        else f"all {count} items done: their outputs are"
    )
    return "\n".join(
        [
            "#!/bin/sh",
            f"# Runs every item of the map {mapped.get('name')} of snapshot {record['id']}"
            f" ({plural(count, 'item')}) with plain docker,",
            "# at most $MLC_PARALLEL at once; item NNNNN's --out values go to items/NNNNN/.",
            "# A failed item runs again up to $MLC_RETRIES times, each time in a fresh container.",
            "# Build the image first: docker build -t snapshot-" + record["id"] + " .",
            "set -eu",
            'HERE=$(cd "$(dirname "$0")" && pwd)',
            f'IMAGE="${{MLC_MAP_IMAGE:-snapshot-{record["id"]}}}"',
            f'PARALLEL="${{MLC_PARALLEL:-{default}}}"',
            f'RETRIES="${{MLC_RETRIES:-{retries}}}"',
            f"COUNT={count}",
            'case "$RETRIES" in',
            "    '' | *[!0-9]* | 0[0-9]* | [0-9][0-9][0-9][0-9]*)",
            '        echo "run-items.sh: MLC_RETRIES must be a whole number from 0 to 999,'
            " not '$RETRIES'\" >&2",
            "        exit 2",
            "        ;;",
            "esac",
            "",
            "# one item (run by xargs): run-items.sh --item POSITION",
            'if [ "${1:-}" = --item ]; then',
            "    # An interrupt ends the item: a stopped item is not retried.",
            "    trap 'exit 130' INT",
            "    trap 'exit 143' TERM",
            '    dir="$HERE/items/$(printf %05d "$2")"',
            "    attempt=0",
            "    while :; do",
            "        attempt=$((attempt + 1))",
            "        # Each attempt starts from an empty folder: what a failed one wrote is not"
            " the item's.",
            '        rm -rf "$dir"',
            '        mkdir -p "$dir"',
            "        # The image runs as an unprivileged user (uid 1000), which must write there.",
            '        chmod 0777 "$dir"',
            "        status=0",
            f'        docker run --rm {options + " " if options else ""}-e MLC_INDEX="$2" '
            f'-v "$dir:{OUT_DIR}" "$IMAGE" \\',
            '            >"$dir/stdout.txt" 2>"$dir/stderr.txt" || status=$?',
            '        if [ "$status" -eq 0 ] || [ "$attempt" -gt "$RETRIES" ]; then',
            "            break",
            "        fi",
            '        echo "item $2: failed (exit status $status), retrying'
            ' ($((attempt + 1)) of $((RETRIES + 1))):" \\',
            '            "$(tail -n 1 "$dir/stderr.txt")" >&2',
            "    done",
            '    echo "$status" >"$dir/exit-code"',
            '    echo "$attempt" >"$dir/attempts"',
            '    tries=""',
            '    if [ "$attempt" -gt 1 ]; then',
            '        tries=" after $attempt attempts"',
            "    fi",
            '    if [ "$status" -ne 0 ]; then',
            '        echo "item $2: failed (exit status $status)$tries:" \\',
            '            "$(tail -n 1 "$dir/stderr.txt")" >&2',
            "        exit 1",
            "    fi",
            '    echo "item $2: done$tries"',
            "    exit 0",
            "fi",
            "",
            'if ! docker image inspect "$IMAGE" >/dev/null 2>&1; then',
            '    echo "run-items.sh: no image $IMAGE; build it first:" \\',
            '        "docker build -t $IMAGE $HERE" >&2',
            "    exit 1",
            "fi",
            'rm -rf "$HERE/items"',
            'mkdir -p "$HERE/items"',
            'echo "running $COUNT items of $IMAGE, at most $PARALLEL at once,"'
            ' "a failed one retried up to $RETRIES times" >&2',
            "seq 0 $((COUNT - 1)) |",
            '    xargs -n 1 -P "$PARALLEL" sh "$HERE/run-items.sh" --item || true',
            "failed=0",
            "for position in $(seq 0 $((COUNT - 1))); do",
            '    code="$HERE/items/$(printf %05d "$position")/exit-code"',
            '    if [ ! -f "$code" ] || [ "$(cat "$code")" != 0 ]; then',
            "        failed=$((failed + 1))",
            "    fi",
            "done",
            'if [ "$failed" -ne 0 ]; then',
            '    echo "run-items.sh: $failed of $COUNT items failed; their'
            ' stderr.txt in $HERE/items/ says why" >&2',
            "    exit 1",
            "fi",
            f'echo "{finished} in $HERE/items/"',
            "",
        ]
    )


def _write_build_context(
    staging: Path,
    record: dict,
    spec,
    backend: Backend,
    data_limit: int,
    serving: dict | None,
    readme: str | None = None,
) -> list[dict]:
    """The locked wheels, the mounted inputs, the Dockerfile and the README (``readme``: a
    template with the same fields instead of the single export's). Returns the mounted
    inputs too large to copy (they must be mounted at run time)."""
    lock = record.get("lock") or []
    if lock:
        (staging / "requirements.lock").write_text(render.lock_txt(lock))
        wheels = backend.fetch_wheels(spec.env_spec.base_image, lock)
        (staging / "wheels").mkdir()
        for name, data in wheels.items():
            (staging / "wheels" / name).write_bytes(data)
    inputs = [
        m
        for m in record.get("mounts") or []
        if m.get("mode") == "ro" and str(m.get("source", "")).startswith("/")
    ]
    copied = sum(m.get("size") or 0 for m in inputs) <= data_limit
    if inputs:
        _write_data(staging, inputs, copied)
    (staging / "Dockerfile").write_text(
        render.dockerfile(
            spec.env_spec.base_image,
            spec.env_spec.apt,
            has_lock=bool(lock),
            wheels=bool(lock),
            data=bool(inputs) and copied,
            serve_port=SERVE_PORT if serving is not None else None,
        )
    )
    (staging / "expected-stdout.txt").write_text(record.get("stdout") or "")
    (staging / "snapshot.json").write_text(json.dumps(record, indent=2, sort_keys=True))
    data_note = ""
    if inputs:
        mounts = " ".join(f"-v {m['source']}:{m['target']}:ro" for m in inputs)
        data_note = (
            DATA_COPIED
            if copied
            else DATA_LISTED.format(limit=format_size(data_limit), id=record["id"], mounts=mounts)
        )
    template = readme or (SERVE_README if serving is not None else EXPORT_README)
    (staging / "README.md").write_text(
        template.format(
            id=record["id"],
            name=f" ({record['name']})" if record.get("name") else "",
            base=spec.env_spec.base_image,
            base_id=(record.get("base_image_id") or "?")[:19],
            data=data_note,
            secrets=SECRETS_NOTE.format(names=", ".join(spec.secrets)) if spec.secrets else "",
            port=SERVE_PORT,
            service=(serving or {}).get("name"),
            entry=(serving or {}).get("entry"),
            snapshot=record["id"],
            **_map_fields(staging, record),
        )
    )
    return [] if copied else inputs


def _recorded_map_option(record: dict, name: str):
    """A map's option as recorded: its map block's, else its spec's; None if neither has it."""
    was = (record.get("map") or {}).get(name)
    return was if was is not None else ((record.get("spec") or {}).get("map") or {}).get(name)


def _recorded_parallel(record: dict) -> int | None:
    """A map's --parallel as recorded; None: it was the backend's default."""
    return _recorded_map_option(record, "parallel") or None


def _recorded_retries(record: dict) -> int:
    """A map's --retries as recorded: attempts of a failed item beyond its first."""
    return int(_recorded_map_option(record, "retries") or 0)


def _map_fields(staging: Path, record: dict) -> dict:
    """MAP_README's fields, of the map block _write_run_folder wrote in mlc/manifest.json."""
    try:
        mapped = json.loads((staging / "mlc" / "manifest.json").read_text()).get("map") or {}
    except (OSError, ValueError):
        mapped = {}
    count = int(mapped.get("count") or len(mapped.get("items") or []))
    return {
        "count": count,
        "map_name": mapped.get("name"),
        "last": count - 1,
        "last_dir": f"{max(count - 1, 0):05d}",
        "parallel": _recorded_parallel(record) or "as many as the machine has cores",
        "retried": _retried(_recorded_retries(record)),
    }


def _retried(retries: int) -> str:
    """The README's words for what run-items.sh does with an item that fails."""
    if not retries:
        return "An item that exits non-zero is not run again, as the map had no `--retries`"
    return (
        f"An item that exits non-zero is run again up to {plural(retries, 'more time')}, as "
        f"the map's `--retries {retries}` said"
    )


def _write_data(staging: Path, inputs: list[dict], copy: bool) -> None:
    """DATA.md (each input, its digest, size and files) and, with ``copy``, the inputs
    themselves under data/ at their path in the container."""
    lines = [
        "# Mounted inputs",
        "",
        "| in the container | from | files | size | digest |",
        "| --- | --- | --- | --- | --- |",
    ]
    for m in inputs:
        lines.append(
            f"| {m['target']} | {m['source']} | {m.get('count')} | "
            f"{format_size(m.get('size'))} | `{m.get('digest')}` |"
        )
        if copy:
            source, target = Path(m["source"]), staging / "data" / m["target"].lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            if source.is_dir():
                shutil.copytree(source, target, symlinks=True)
            else:
                shutil.copy2(source, target)
    lines += ["", "Copied into `data/`." if copy else "Not copied: mount them when you run it."]
    (staging / "DATA.md").write_text("\n".join(lines) + "\n")


# -- deploy -----------------------------------------------------------------------------------


def deploy_snapshot(
    store,
    ref: str,
    backend,
    *,
    name: str | None = None,
    entry: str | None = None,
    replicas: int | None = None,
    events=no_events,
    secrets_file: str | None = None,
):
    """Serve snapshot ``ref``'s cell on a cluster (``backend``: a KubernetesBackend) as a
    Deployment of ``replicas`` pods (default: as it was served, else 1) and a Service: its
    environment built from the recorded lock where the image is gone and pushed where the
    registry lacks it, then created or patched (a rollout) and waited for. The record notes
    where it is deployed. Returns the DeployedService; RolloutFailed says why it cannot."""
    record = store.get(ref)
    serving = serve_block(record, name, entry)
    replicas = parse_replicas(replicas)
    spec = spec_from_record(record)
    # Refused as `--serve --backend kubernetes` is, before any work: --network none (its pods
    # would keep the cluster's network), more replicas than the backend runs.
    served = parse_serve(serving["name"], entry=serving["entry"], replicas=replicas or 1)
    services_of(backend, replace(spec, serve=served))
    # What else a served cell cannot have (check_serve) means nothing to a Deployment: a run's
    # --out values stay in its pods, its session was this kernel's.
    spec = replace(spec, outputs=(), session=None, serve=None)
    values = resolve(spec.secrets, os.environ, secrets_file)
    backend.check_mounts(spec)
    env = backend.ensure_environment(spec.env_spec, events=events, lock=record.get("lock") or None)
    from .kubernetes.export import mount_files, payload_files

    with tempfile.TemporaryDirectory(prefix="mlc-deploy-") as folder:
        mlc = Path(folder) / "mlc"
        _write_run_folder(mlc, record, spec, store.artifacts_dir(record["id"]), serving)
        files = {**payload_files(mlc), **mount_files(spec)}
    deployed = backend.deploy_service(
        spec,
        env,
        files,
        run_id=record["id"],
        service=serving["name"],
        entry=serving["entry"],
        replicas=replicas or _recorded_replicas(record),
        secrets=values,
        events=events,
    )
    target = backend.target()
    here = {**deployed.to_dict(), "context": target.get("context"), "at": time.time()}
    kept = [
        d
        for d in store.get(record["id"]).get("deployed") or []
        if (d.get("context"), d.get("namespace"), d.get("name"))
        != (here["context"], here["namespace"], here["name"])
    ]
    store.update(record["id"], deployed=[*kept, here])
    return deployed
