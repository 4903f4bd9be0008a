"""Fan-out (``--map NAME``): one cell over the items of a notebook value, one container each.

One map is one snapshot. Its run folder is written once: the cell, the shared ``--in`` values,
and the items as files ``in/NAME/00003.npy`` listed in the manifest's ``map`` block, which the
runner reads to bind NAME to item ``MLC_INDEX``. The backend runs the items
(``Backend.run_map``), each with its own ``out/00003/``; their ``--out`` values come back as
lists in item order, ``None`` for an item that failed. The whole value NAME is kept (and
digested) as an input too: the map's lineage links it as a run's ``--in`` values are linked.

The run itself is ``runs.run_steps`` with a map step, as services are: the same record, the
same environment, the same folder, the same failure recording.

Pure: ``items_of`` (value -> items), ``map_sizes``, ``map_manifest``, ``item_record``,
``map_error``.
"""

from __future__ import annotations

import json
import shutil
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import MapError, SpecError, StoreError, StoreUnavailable
from . import runs, transfer
from .backend import Backend, ItemResult, RunResult, item_out_dir
from .events import REASONS, Phase, no_events
from .spec import RunSpec

TRACEBACK_LINES = 12  # of a failed item's traceback, kept in its record and shown in the error
SHOWN_FAILURES = 10  # failed items the map's error lists one by one


# -- items (pure) -------------------------------------------------------------------------------


def items_of(value: Any, name: str) -> list:
    """The items of a mapped value: a list's or tuple's elements, a numpy array's rows (along
    its first axis; a 1-D array's elements as 0-d arrays, sent as .npy), a list of DataFrames'
    frames. Anything else, or nothing, is a SpecError before anything is built."""
    np = sys.modules.get("numpy")
    pd = sys.modules.get("pandas")
    if np is not None and isinstance(value, np.ndarray):
        if value.ndim == 0:
            raise SpecError(
                f"--map {name}: a 0-dimensional array has no items; map a list, or an array "
                "whose first axis holds the items."
            )
        items = [np.asarray(value[i]) for i in range(value.shape[0])]
    elif pd is not None and isinstance(value, (pd.DataFrame, pd.Series)):
        raise SpecError(
            f"--map {name}: a {type(value).__name__} is not mapped row by row; give a list of "
            f"DataFrames, one per item (e.g. [{name}.iloc[i:i + 1000] for i in range(0, "
            f"len({name}), 1000)]), or a list of its rows' values."
        )
    elif type(value) in (list, tuple):
        items = list(value)
    else:
        raise SpecError(
            f"--map {name}: a {type(value).__name__} cannot be mapped; give a list, a tuple, a "
            "numpy array (mapped along its first axis) or a list of DataFrames"
            + (f" (e.g. list({name}))" if _listable(value) else "")
            + "."
        )
    if not items:
        raise SpecError(f"--map {name} is empty: there is no item to run the cell on.")
    for i, item in enumerate(items):
        label = f"{name}[{i}]"
        try:
            transfer.check_inputs([label], {label: item})
        except SpecError as e:
            raise SpecError(f"--map {str(e).removeprefix('--in ')}") from None
    return items


def _listable(value) -> bool:
    """Whether list(value) would give the items someone meant (a dict's keys, a range's
    numbers, a generator's values), for the hint; not text, whose items are characters."""
    if isinstance(value, (str, bytes, bytearray)):
        return False
    try:
        iter(value)
    except TypeError:
        return False
    return True


def map_sizes(shared: Sequence, items: Sequence, limit: int | None) -> tuple[list, list]:
    """transfer.encoded_size of the shared --in values and of the items, for a backend's
    check_map. With ``limit`` (Backend.map_size_limit), a pickled value is measured only as
    far as what is left of it once the values before are counted: every size is exact while
    the total is at most ``limit``, and once it is over, the sizes add up to more than
    ``limit`` too, for no more pickling than ``limit`` bytes (and a frame per value after)."""
    left = limit
    sizes: list[list[int]] = [[], []]
    for out, values in zip(sizes, (shared, items)):
        for value in values:
            size = transfer.encoded_size(value, None if left is None else max(left, 0))
            out.append(size)
            if left is not None:
                left -= size
    return sizes[0], sizes[1]


def map_manifest(name: str, entries: Sequence[dict]) -> dict:
    """The ``map`` block of a map's manifest.json: the runner binds ``name`` to
    ``items[MLC_INDEX]`` (a Kubernetes Indexed Job's JOB_COMPLETION_INDEX where MLC_INDEX is
    unset). Each entry: ``file`` (relative to /mlc), ``format``, ``size``, ``index`` (the
    item's own index, which the cell sees as MLC_INDEX), ``digest``; ``python`` for pickle."""
    return {"name": name, "count": len(entries), "items": list(entries)}


def short_traceback(stderr: str, limit: int = TRACEBACK_LINES) -> str:
    """The last traceback in ``stderr``, cut to its first lines and its last (where the error
    is) when it is longer than ``limit`` lines; else the last lines of stderr."""
    lines = (stderr or "").rstrip().splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("Traceback")]
    lines = lines[starts[-1] :] if starts else lines[-limit:]
    if len(lines) > limit:
        lines = lines[:3] + ["  ..."] + lines[-(limit - 4) :]
    return "\n".join(lines)


def item_record(entry: dict, result: ItemResult, outputs: dict, problem: str | None) -> dict:
    """One item as the map's record keeps it."""
    reason = "failed" if result.reason == "done" and problem else result.reason
    record = {
        "index": entry.get("index", result.index),
        "input_digest": entry.get("digest"),
        "reason": reason,
        "exit_code": result.exit_code,
        "attempts": result.attempts,
        "duration": result.duration,
        "outputs": outputs,
        "stdout_digest": runs.text_digest(result.stdout),
    }
    if reason != "done":
        error = short_traceback(result.stderr)
        record["error"] = "\n".join(x for x in (problem or result.message, error) if x)
    return record


def map_error(outcome: runs.RunOutcome) -> MapError | None:
    """The error a map raises once all its items have ended: which items failed, how, and the
    first lines of each one's traceback; None when every item succeeded."""
    block = outcome.map or {}
    failed = [i for i in block.get("items", []) if i.get("reason") != "done"]
    if not failed:
        return None
    count = block.get("count") or len(block.get("items", []))
    shown = []
    for item in failed[:SHOWN_FAILURES]:
        how = REASONS.get(item["reason"], item["reason"])
        code = f", exit code {item['exit_code']}" if item.get("exit_code") is not None else ""
        tries = f", after {item['attempts']} attempts" if item.get("attempts", 1) > 1 else ""
        shown.append(f"item {item['index']}: {how}{code}{tries}")
        shown += ["    " + line for line in (item.get("error") or "").splitlines()]
    if len(failed) > SHOWN_FAILURES:
        shown.append(f"... and {len(failed) - SHOWN_FAILURES} more (`mlcontainer show ID`)")
    head = (
        f"{len(failed)} of {count} items of --map {block.get('name')} failed; the other items' "
        "--out values came back (None in the failed items' places)."
    )
    reason = "stopped" if any(i["reason"] == "stopped" for i in failed) else "failed"
    exit_code = next((i["exit_code"] for i in failed if i.get("exit_code") is not None), None)
    # The tracebacks are in the message: a front end shows them once, with the items.
    return MapError("\n".join([head, *shown]), failed=failed, exit_code=exit_code, reason=reason)


def item_algorithms(record: dict) -> dict:
    """Per --out name, the digest algorithm of a map's recorded items (a rerun digests its
    items' values the same way, so that --verify compares like with like)."""
    found: dict[str, str] = {}
    for item in (record.get("map") or {}).get("items") or []:
        for name, rec in (item.get("outputs") or {}).items():
            algo = transfer.digest_algorithm(rec.get("digest"))
            if algo in transfer.ALGORITHMS:
                found.setdefault(name, algo)
    return found


def verify_items(old: dict, new: dict) -> list[str]:
    """Differences that make a map's rerun (of every item, or of some) not reproduce the
    recorded one: per item, how it ended, what it printed and its --out digests."""
    recorded = {i.get("index"): i for i in (old.get("map") or {}).get("items") or []}
    problems = []
    for item in (new.get("map") or {}).get("items") or []:
        index = item.get("index")
        was = recorded.get(index)
        if was is None:
            problems.append(f"item {index}: not in the recorded map")
            continue
        if item.get("reason") != was.get("reason"):
            problems.append(
                f"item {index}: ended {item.get('reason')} (recorded {was.get('reason')})"
            )
        if was.get("stdout_digest") and was["stdout_digest"] != item.get("stdout_digest"):
            problems.append(f"item {index}: stdout differs")
        for name, rec in (was.get("outputs") or {}).items():
            now = (item.get("outputs") or {}).get(name) or {}
            if rec.get("digest") != now.get("digest"):
                problems.append(
                    f"item {index}: output {name} differs: recorded {rec.get('digest')}, "
                    f"now {now.get('digest')}"
                )
    if not (new.get("map") or {}).get("items"):
        problems.append(f"the rerun ended {new.get('status')} before its items did")
    return problems


# -- a map, start to finish ---------------------------------------------------------------------


def execute_map(
    spec: RunSpec, backend: Backend, *, only: Sequence[int] | None = None, **options: Any
) -> runs.RunOutcome:
    """Run the cell of ``spec`` (with ``spec.map``) once per item of ``options["inputs"]``'s
    value NAME, and record one snapshot; ``only``: those items' indexes alone (a rerun of
    one). ``options`` are runs.run_steps' (inputs, events, output, rebuild, store, context,
    lock, secrets, output_digests: per --out name, the algorithm of its items' digests).

    Items that fail raise nothing here (``map_error``); an interrupt stops every item's
    container and raises once none is left, the snapshot recorded as interrupted."""
    mapped = spec.map
    assert mapped is not None, "a mapped spec"
    inputs = dict(options.get("inputs") or {})
    if mapped.name not in inputs:
        raise SpecError(
            f"--map {mapped.name}: no such variable in the notebook; define it first or fix "
            "the name."
        )
    items = items_of(inputs[mapped.name], mapped.name)
    chosen = list(range(len(items))) if only is None else list(only)
    for index in chosen:
        if not 0 <= index < len(items):
            raise SpecError(
                f"--item {index}: the map has {len(items)} items, 0 to {len(items) - 1}."
            )
    # Before the environment is built (or pushed): a backend that cannot carry the items
    # (too large for a Kubernetes Secret) says so now.
    shared_sizes, item_sizes = map_sizes(
        [inputs[n] for n in spec.inputs if n != mapped.name and n in inputs],
        [items[i] for i in chosen],
        backend.map_size_limit(),
    )
    backend.check_map(spec, item_sizes, sum(shared_sizes))
    store, events = options.get("store"), options.get("events") or no_events
    algorithms = dict(options.get("output_digests") or {})

    def step(outcome, workdir, hashing, masker, secrets) -> bool:
        _run_items(
            outcome,
            backend,
            workdir,
            hashing,
            masker,
            secrets,
            items={i: items[i] for i in chosen},
            store=store,
            events=events,
            algorithms=algorithms,
        )
        return False

    outcome = runs.run_steps(spec, backend, step, **options)
    if store:
        runs.record_outcome(store, outcome)
    return outcome


def _run_items(
    outcome: runs.RunOutcome,
    backend: Backend,
    workdir: Path,
    hashing: transfer.BackgroundDigests,
    output,
    secrets,
    *,
    items: dict,
    store,
    events,
    algorithms: dict,
) -> None:
    """The map's step: its items into the folder, run, their values read back in order."""
    spec, run_id = outcome.spec, outcome.run_id
    mapped = spec.map
    assert mapped is not None and outcome.env is not None
    kept = store.artifacts_dir(run_id) if store else None
    t0 = time.perf_counter()
    entries = write_items(items, workdir, mapped.name, keep=kept)
    manifest_path = workdir / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    # NAME's whole value is the run's input (its digest, its lineage); a container needs its
    # own item only.
    manifest["inputs"].pop(mapped.name, None)
    manifest["map"] = map_manifest(mapped.name, entries)
    manifest_path.write_text(json.dumps(manifest))
    if kept is not None:
        shutil.copyfile(manifest_path, kept / "manifest.json")
    for position in range(len(entries)):
        folder = item_out_dir(workdir, position)
        folder.mkdir(parents=True, exist_ok=True)
        folder.chmod(0o777)  # the container's non-root user writes here
    outcome.timings["items"] = round(time.perf_counter() - t0, 3)
    events(Phase.STARTING)
    t1 = time.perf_counter()
    cancel, over = threading.Event(), threading.Event()
    if store is not None:  # a stop from the sidebar or the CLI: no item starts any more
        threading.Thread(
            target=_watch_stop,
            args=(store, run_id, cancel, over),
            name="mlcontainer-map-stop",
            daemon=True,
        ).start()
    try:
        results = backend.run_map(
            spec,
            outcome.env,
            workdir,
            run_id=run_id,
            count=len(entries),
            parallel=mapped.parallel,
            retries=mapped.retries,
            events=events,
            output=output,
            secrets=secrets,
            cancel=cancel,
        )
    finally:
        over.set()
    outcome.timings["run"] = round(time.perf_counter() - t1, 3)
    try:
        hashing.fill(outcome.inputs)
    except OSError as e:
        raise StoreUnavailable(
            f"Could not keep the inputs of snapshot {run_id}: {e.strerror or e}. Free some "
            "disk space, or set MLCONTAINER_STORE to another folder."
        ) from None
    shutil.rmtree(workdir / "in", ignore_errors=True)
    if store and any(r.reason == "killed" for r in results):
        # Killed by a stop from the sidebar, the widget or the CLI (another process's: this
        # one's says "stopped" already); an item that failed on its own stays failed.
        if store.get(run_id).get("stop_requested"):
            for r in results:
                if r.reason == "killed":
                    r.reason = "stopped"
    events(Phase.COLLECTING)
    t2 = time.perf_counter()
    gather(outcome, entries, results, kept, algorithms)
    outcome.timings["collect"] = round(time.perf_counter() - t2, 3)


STOP_POLL = 0.5  # seconds between looks at a running map's record for a stop request


def _watch_stop(store, run_id: str, cancel: threading.Event, over: threading.Event) -> None:
    """Set ``cancel`` once the map's record says someone asked it to stop (runs.request_stop,
    from another process too), until ``over``."""
    while not over.wait(STOP_POLL):
        try:
            if store.get(run_id).get("stop_requested"):
                cancel.set()
                return
        except StoreError:
            pass  # busy, or gone: look again


def write_items(items: dict, workdir: Path, name: str, keep: Path | None = None) -> list[dict]:
    """Each item (index -> value) as ``in/NAME/NNNNN.EXT`` in the run's folder, digested (and
    kept in ``keep``, a snapshot's folder, as it is digested); the manifest's entries."""
    folder = workdir / "in" / name
    folder.mkdir(parents=True, exist_ok=True)
    entries = []
    for index, item in items.items():
        fmt = transfer.choose_format(item)
        path = transfer.write_value(item, folder, f"{index:05d}", fmt)
        file = f"in/{name}/{path.name}"
        entry = {
            "file": file,
            "format": fmt,
            "size": path.stat().st_size,
            "index": index,
            "digest": transfer.keep_digest(path, keep / file if keep else None),
        }
        if fmt == "pickle":
            entry["python"] = transfer.PY
        entries.append(entry)
    return entries


def gather(
    outcome: runs.RunOutcome,
    entries: list[dict],
    results: list[ItemResult],
    kept: Path | None,
    algorithms: dict,
) -> None:
    """The items' --out values into lists in item order (None where an item failed), each
    item's record, and the map's result: done when every item is."""
    spec = outcome.spec
    mapped = spec.map
    assert mapped is not None
    values: dict[str, list] = {name: [None] * len(entries) for name in spec.outputs}
    records = []
    for entry, result in zip(entries, sorted(results, key=lambda r: r.index)):
        outputs: dict = {}
        problem = None
        if result.reason == "done" and spec.outputs and result.out_dir is not None:
            got, outputs = transfer.read_outputs(result.out_dir, spec.outputs, algorithms)
            problems = [f"--out {n}: {r['error']}" for n, r in outputs.items() if "error" in r]
            problem = "; ".join(problems) or None
            if problem is None:
                for name, value in got.items():
                    values[name][result.index] = value
                if kept is not None:
                    runs.keep_outputs(kept / "out" / result.out_dir.name, result.out_dir, outputs)
        records.append(item_record(entry, result, outputs, problem))
    outcome.values = values
    outcome.outputs = _gathered(values, kept)
    ok = all(r["reason"] == "done" for r in records)
    stopped = any(r["reason"] == "stopped" for r in records)
    failed = next((r for r in records if r["reason"] != "done"), None)
    ordered = sorted(results, key=lambda r: r.index)
    outcome.result = RunResult(
        0 if ok else (failed or {}).get("exit_code"),
        "done" if ok else ("stopped" if stopped else "failed"),
        "".join(r.stdout for r in ordered),
        "".join(r.stderr for r in ordered),
        message=None if ok else _failed_text(sum(r["reason"] != "done" for r in records)),
    )
    outcome.map = {
        "name": mapped.name,
        "count": len(entries),
        "parallel": mapped.parallel,
        "retries": mapped.retries,
        "items": records,
    }


def _failed_text(n: int) -> str:
    """A map's reason: ``1 item failed``, ``3 items failed``."""
    return f"{n} item{'' if n == 1 else 's'} failed"


def _gathered(values: dict[str, list], kept: Path | None) -> dict:
    """Each --out list as the kernel gets it, with the digest it has as a value (so a later
    cell that takes it as --in links to this map); kept with the snapshot."""
    if kept is None:
        return {}
    folder = kept / "out"
    folder.mkdir(parents=True, exist_ok=True)
    records: dict[str, dict] = {}
    for name, value in values.items():
        fmt = transfer.choose_format(value)
        try:
            path = transfer.write_value(value, folder, f"map-{name}", fmt)
        except Exception as e:  # an item's value pickle cannot write: its digest is unknown
            records[name] = {"format": fmt, "note": f"not digested ({type(e).__name__})"}
            continue
        records[name] = {
            "format": fmt,
            "digest": transfer.file_digest(path),
            "size": path.stat().st_size,
        }
    return records
