"""One containerized run, start to finish: spec -> environment -> container -> result.

Shared by the magics, the CLI (rerun) and the server extension; knows nothing of IPython.
"""

from __future__ import annotations

import errno
import hashlib
import importlib
import json
import os
import platform
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from ..errors import CapabilityMissing, RunError, SpecError, StoreError, StoreUnavailable
from ..runner import MESSAGE_PREFIX, VALUES_EXIT, runner_source
from . import lineage, transfer
from .backend import Backend, Environment, RunResult, WarmSessions
from .events import REASONS, Events, Output, Phase, no_events
from .secrets import Masker
from .spec import RunSpec, serve_manifest


@dataclass
class RunOutcome:
    run_id: str
    spec: RunSpec
    env: Environment | None = None
    result: RunResult | None = None
    timings: dict = field(default_factory=dict)
    inputs: dict = field(default_factory=dict)  # name -> {format, digest, size}
    outputs: dict = field(default_factory=dict)  # name -> {format, digest, size} or {error}
    values: dict = field(default_factory=dict)  # the --out values, read back
    mounts: list = field(default_factory=list)  # per mount: source, target, mode, digest, ...
    written: dict = field(default_factory=dict)  # writable mount -> {path: [size, digest]}
    output_digests: dict = field(default_factory=dict)  # name -> algorithm, else transfer's
    kernel: str | None = None  # the kernel that ran it (context's): lineage stays within one
    parents: list | None = None  # per input, where it came from (lineage.link), once known
    map: dict | None = None  # a map's record of its items (core/maps.py), once they ended

    @property
    def ok(self) -> bool:
        return self.result is not None and self.result.reason == "done"

    @property
    def reason(self) -> str:
        """How it ended (RunResult.reason); "failed" for a run that never got a result."""
        return self.result.reason if self.result is not None else "failed"


# Run folders go to a RAM-backed filesystem (tmpfs) when one has room: a large value then
# crosses at memory speed. On disk (ext4, measured 2026-12-01) a container's np.save of 200 MB
# made its run 0.3 s longer, and the kernel's np.load of that file took 0.5-1 s, not 0.1 s;
# bench/run.py scenario 7 measures the whole crossing.
RAM_ROOTS = ("/dev/shm",)
RAM_RESERVE = 1 << 30  # memory a run folder in RAM leaves free, beyond twice its inputs
RUN_DIR_ENV = "MLCONTAINER_RUN_DIR"  # a folder of the user's choice (e.g. /var/tmp: on disk)


def run_folder_root() -> str | None:
    """The folder run folders are made in: $MLCONTAINER_RUN_DIR when set; else /dev/shm when
    it is a tmpfs with RAM_RESERVE to spare; else None (tempfile's default, usually /tmp).
    Standby folders are made here too, so that a run in one lands on the same filesystem."""
    chosen = os.environ.get(RUN_DIR_ENV)
    if chosen:
        if not os.path.isdir(chosen):
            raise SpecError(
                f"{RUN_DIR_ENV}={chosen}: no such folder. Create it, or unset {RUN_DIR_ENV} "
                "to let run folders go to /dev/shm or the system's temp folder."
            )
        return chosen
    for root in RAM_ROOTS:
        if in_memory(root) and os.access(root, os.W_OK | os.X_OK) and ram_room(root) > RAM_RESERVE:
            return root
    return None


def in_memory(path: str | Path) -> bool:
    """Whether ``path`` is on a tmpfs: the last-mounted of the longest mount points above it."""
    real, best, fstype = os.path.realpath(path), "", ""
    try:
        with open("/proc/self/mounts", encoding="utf-8", errors="replace") as f:
            for line in f:
                fields = line.split()
                if len(fields) < 3:
                    continue
                point = fields[1].replace("\\040", " ")
                inside = real == point or real.startswith(point.rstrip("/") + "/")
                if inside and len(point) >= len(best):
                    best, fstype = point, fields[2]
    except OSError:  # not Linux: no tmpfs to find
        return False
    return fstype == "tmpfs"


def ram_room(path: str | Path) -> int:
    """Bytes a file in the tmpfs at ``path`` may take: its free space, and no more than the
    memory the machine has available (a tmpfs may be sized larger than that)."""
    try:
        st = os.statvfs(path)
        with open("/proc/meminfo", encoding="ascii") as f:
            fields = dict(line.split(":", 1) for line in f if ":" in line)
        available = int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return 0
    return min(st.f_bavail * st.f_frsize, available)


def run_folder_for(spec: RunSpec, inputs: dict) -> str | None:
    """run_folder_root(), unless that is in RAM and this run should not be: its inputs, and an
    output as large, would not leave RAM_RESERVE free; or the cell has a --memory limit, which
    what it writes to a tmpfs counts against (on disk that is page cache the kernel can evict).
    A folder made ahead for a spec (a standby's) can ask with no inputs."""
    root = run_folder_root()
    if root is None or not in_memory(root):
        return root
    if spec.memory:
        return None
    need = sum(transfer.value_size(value) for value in inputs.values())
    return root if ram_room(root) > 2 * need + RAM_RESERVE else None


def _same_root(folder: Path, root: str | None) -> bool:
    where = root if root is not None else tempfile.gettempdir()
    return os.path.realpath(Path(folder).parent) == os.path.realpath(where)


def prepare_workdir(
    spec: RunSpec,
    inputs: dict,
    parent: Path | None = None,
    *,
    digests: bool = True,
    folder: Path | None = None,
    serve: dict | None = None,
) -> tuple[Path, dict]:
    """The run's own folder, mounted at /mlc: runner, cell, manifest, values in, out/.
    In a warm session it is made inside the session's folder (``parent``), else in
    ``run_folder_root()`` when this run fits there; a folder the backend claimed (``folder``:
    a standby container's, out/ mounted already) is filled instead. Without ``digests`` the
    inputs' records lack theirs (see transfer.BackgroundDigests). ``serve``: the manifest's
    block for a served cell (spec.serve_manifest)."""
    if folder is not None:
        workdir = folder
    else:
        root = parent if parent is not None else run_folder_for(spec, inputs)
        workdir = Path(tempfile.mkdtemp(prefix="mlc-run-", dir=root))
    try:
        workdir.chmod(0o755)
        (workdir / "runner.py").write_bytes(runner_source())
        (workdir / "cell.py").write_text(spec.code, encoding="utf-8")
        records = transfer.write_inputs(inputs, workdir / "in", digests=digests) if inputs else {}
        manifest = {
            "inputs": records,
            "outputs": list(spec.outputs),
            "host": transfer.host_capabilities(),
        }
        if serve is not None:
            manifest["serve"] = serve
        (workdir / "manifest.json").write_text(json.dumps(manifest))
        out = workdir / "out"
        out.mkdir(exist_ok=folder is not None)
        out.chmod(0o777)  # the container's non-root user writes here
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    return workdir, records


# What runs once the run's folder is ready: step(outcome, workdir, hashing, output, secrets)
# returns True when the folder outlives it (a service's, until the service stops).
Step = Callable[[RunOutcome, Path, transfer.BackgroundDigests, Output, Mapping[str, str]], bool]


def execute(spec: RunSpec, backend: Backend, **options: Any) -> RunOutcome:
    """Build (or reuse) the environment, run the cell and record the snapshot in ``store``.
    ``options`` are run_steps' (inputs, events, output, rebuild, store, context, lock,
    secrets, output_digests).

    A failed cell raises nothing (see ``failure``). A run that never reached its container
    (bad base, failed build, interrupt while building) leaves no snapshot behind. ``secrets``
    are the values of ``spec.secrets``: given to the run, masked in its output, never recorded.
    ``output_digests``: output name -> digest algorithm (a rerun's, as its record has them).
    """
    pool = _sessions_for(spec, backend)
    store, events = options.get("store"), options.get("events") or no_events

    def run_and_collect(outcome, workdir, hashing, masker, values) -> bool:
        _run_and_collect(outcome, pool or backend, workdir, hashing, store, events, masker, values)
        return False

    outcome = run_steps(spec, backend, run_and_collect, pool=pool, **options)
    if store:
        record_outcome(store, outcome)
    return outcome


def run_steps(
    spec: RunSpec,
    backend: Backend,
    step: Step,
    *,
    inputs: dict | None = None,
    events: Events = no_events,
    output: Output | None = None,
    rebuild: bool = False,
    store=None,
    context: dict | None = None,
    lock: list | None = None,
    secrets: Mapping[str, str] | None = None,
    output_digests: Mapping[str, str] | None = None,
    pool: WarmSessions | None = None,
) -> RunOutcome:
    """The steps every run shares, around ``step`` (which runs the container): the record of
    its start, its environment, its folder (kept with the snapshot) and status "running".
    What fails before ``step`` leaves no snapshot; what fails in it is recorded as failed.
    The caller records how a run that returns ended."""
    run_id = store.new_id({"spec": spec.to_dict()}) if store else uuid.uuid4().hex[:12]
    outcome = RunOutcome(
        run_id,
        spec,
        output_digests=dict(output_digests or {}),
        kernel=(context or {}).get("kernel"),
    )
    # Refused here, before anything is built or recorded.
    secrets = _check_data(spec, backend, secrets)
    masker = Masker(output or (lambda stream, text: None), secrets.values())
    # Mounts need the digest machinery (xxhash, SQLite): imported only when there are some.
    mounts = importlib.import_module(".mounts", __package__) if spec.mounts else None
    cache = mounts.DigestCache(store.root) if mounts and store is not None else None
    try:
        manifests = _start_record(outcome, backend, store, context or {}, events, mounts, cache)
        workdir = claimed = None
        hashing = None  # the inputs' digests, taken while the container runs
        started = False  # past this point the run is a snapshot, whatever happens
        kept = False  # the step keeps the folder (a service's)
        failed = False  # then the folder goes before the error reaches the caller
        try:
            t0 = time.perf_counter()
            outcome.env = backend.ensure_environment(
                spec.env_spec, events=events, rebuild=rebuild, lock=lock
            )
            outcome.timings["environment"] = round(time.perf_counter() - t0, 3)
            parent = pool.workdir_parent(spec, outcome.env, events) if pool else None
            # A standby container's folder, where the backend has one ready for these settings
            # and it lies where this run's folder would (not in RAM for large inputs). Not for
            # a service: its container is made to publish a port; nor for a map: its items'
            # containers each have an out folder of their own.
            claimed = (
                None
                if pool or spec.serve or spec.map
                else backend.claim_run_folder(spec, outcome.env)
            )
            if claimed is not None and not _same_root(claimed, run_folder_for(spec, inputs or {})):
                backend.release_run_folder(claimed)
                claimed = None
            serve = serve_manifest(spec.serve, run_id, outcome.env.lock) if spec.serve else None
            workdir, outcome.inputs = prepare_workdir(
                spec, inputs or {}, parent, digests=False, folder=claimed, serve=serve
            )
            kept_dir = store.artifacts_dir(run_id) if store else None
            # The lineage is found as soon as the inputs' digests are: shown while it runs.
            link = partial(link_inputs, store, outcome, events=events) if store else None
            hashing = transfer.BackgroundDigests(outcome.inputs, workdir, keep=kept_dir, then=link)
            if store:
                keep_inputs(store.artifacts_dir(run_id), workdir, values=False)
                if mounts:
                    mounts.keep_manifests(store.artifacts_dir(run_id), manifests)
                store.update(
                    run_id,
                    status="running",
                    inputs=outcome.inputs,
                    **record_environment(outcome.env),
                )
            started = True
            before = mounts.before_writes(spec) if mounts else {}
            try:
                kept = step(outcome, workdir, hashing, masker, secrets)
            finally:
                _mask_and_note_writes(outcome, masker, mounts, before, cache)
        except BaseException as e:
            failed = True
            if store and not started:
                if hashing is not None:
                    hashing.wait()  # it writes into the snapshot's folder about to go
                _forget(store, run_id)
            elif store:
                _record_failure(store, outcome, e, hashing)
            raise
        finally:
            if hashing is not None:
                hashing.wait()  # it reads the folder about to go
            try:
                if workdir is not None and not kept:
                    if failed:  # a refusal or a failure leaves nothing by the time it is raised
                        shutil.rmtree(workdir, ignore_errors=True)
                    else:
                        remove_soon(workdir)
            finally:  # a second interrupt during that removal still frees the standby's claim
                if claimed is not None:
                    backend.release_run_folder(claimed)
        return outcome
    finally:
        if cache is not None:
            cache.close()


def _start_record(
    outcome: RunOutcome, backend: Backend, store, context: dict, events: Events, mounts, cache
) -> dict:
    """Digest the mounts (what the cell will read), then record the run's start; the mounts'
    per-file manifests, to keep with the snapshot."""
    spec, manifests = outcome.spec, {}
    if mounts:
        outcome.mounts, manifests, outcome.timings["digest"] = mounts.digest_inputs(spec, cache)
        events(Phase.MOUNTED, mounts=outcome.mounts, seconds=outcome.timings["digest"])
    if store:
        start = record_start(spec, outcome.run_id, context)
        store.put(
            dict(
                start,
                namespace=backend.namespace,
                backend=backend.name,
                target=backend.target(),
                mounts=outcome.mounts,
            )
        )
        events(Phase.RECORDED, snapshot=outcome.run_id)
    return manifests


def _mask_and_note_writes(outcome: RunOutcome, masker: Masker, mounts, before: dict, cache) -> None:
    """After the run, however it ended: what the backend gathered passes the mask too, and
    what the cell wrote in writable mounts is noted."""
    masker.close()
    if outcome.result is not None:
        outcome.result.stdout = masker.mask(outcome.result.stdout)
        outcome.result.stderr = masker.mask(outcome.result.stderr)
    outcome.written = mounts.written(outcome.spec, before, cache) if mounts else {}


def _sessions_for(spec: RunSpec, backend: Backend) -> WarmSessions | None:
    """The backend's warm sessions when the spec asks for one; refused where it has none."""
    if not spec.session:
        return None
    pool = backend.sessions
    if pool is None:
        raise CapabilityMissing(
            f"--session is not supported with --backend {backend.name}: every cell runs in a "
            "container of its own there. Run the cell without --session, or with the Docker "
            "backend (--backend docker) to keep a warm interpreter between cells."
        )
    return pool


def _check_data(spec: RunSpec, backend: Backend, secrets) -> dict[str, str]:
    """The secrets' values, checked against the spec; mounts and secrets where the backend
    (or a warm session) can take them."""
    backend.check_mounts(spec)
    if spec.session and (spec.mounts or spec.secrets):
        raise CapabilityMissing(
            "--mount and --secret are not supported with --session yet: the session's "
            "container is already running. Run the cell without --session."
        )
    values = dict(secrets or {})
    missing = sorted(set(spec.secrets) - set(values))
    if missing:
        raise SpecError(
            f"No value for the secret(s) {', '.join(missing)}: set them in the "
            "environment (or the secrets_file setting) and run again."
        )
    return {k: values[k] for k in spec.secrets}


def _run_and_collect(
    outcome: RunOutcome,
    runner: Backend | WarmSessions,
    workdir: Path,
    hashing: transfer.BackgroundDigests,
    store,
    events: Events,
    output: Output | None,
    secrets: Mapping[str, str],
) -> None:
    """Run the cell in its folder, then bring its --out values back (and keep them)."""
    spec, run_id, env = outcome.spec, outcome.run_id, outcome.env
    assert env is not None, "the environment comes first"
    t1 = time.perf_counter()
    result = runner.run(
        spec, env, workdir, run_id=run_id, events=events, output=output, secrets=secrets
    )
    outcome.result = result
    try:
        hashing.fill(outcome.inputs)
    except OSError as e:
        raise _not_kept("inputs", store.artifacts_dir(run_id) if store else workdir, e) from None
    t2 = time.perf_counter()
    outcome.timings["run"] = round(t2 - t1, 3)
    # The snapshot has its inputs by now: freed before the outputs are read, they do not add
    # to the run's peak memory (in a run folder in RAM, a 200 MB input is 200 MB of it).
    shutil.rmtree(workdir / "in", ignore_errors=True)
    if store and result.reason in ("killed", "failed") and store.get(run_id).get("stop_requested"):
        result.reason = "stopped"  # from the sidebar, the widget or the CLI
    if result.reason == "done" and spec.outputs:
        events(Phase.COLLECTING)
        outcome.values, outcome.outputs = transfer.read_outputs(
            workdir / "out", spec.outputs, outcome.output_digests
        )
        outcome.timings["collect"] = round(time.perf_counter() - t2, 3)
        if store:
            keep_outputs(store.artifacts_dir(run_id), workdir / "out", outcome.outputs)


def _record_failure(store, outcome: RunOutcome, error: BaseException, hashing) -> None:
    """A run that reached its container and then raised: recorded as failed or interrupted."""
    status = "interrupted" if isinstance(error, KeyboardInterrupt) else "failed"
    try:
        if hashing is not None:
            hashing.fill(outcome.inputs)
    except Exception:  # the run's own error matters more
        pass
    # What the container printed before it ended, where the step knows it (a service's).
    printed = {}
    if outcome.result is not None:
        r = outcome.result
        printed = {"stdout": r.stdout, "stderr": r.stderr, "exit_code": r.exit_code}
    store.update(
        outcome.run_id,
        status=status,
        reason=f"{type(error).__name__}: {error}".strip(": "),
        finished=time.time(),
        timings=outcome.timings,
        inputs=outcome.inputs,
        parents=outcome.parents or [],
        **printed,
    )


def link_inputs(store, outcome: RunOutcome, digests: dict, events: Events = no_events) -> None:
    """Once the inputs' ``digests`` are known (name -> digest): which earlier snapshots of
    this kernel produced them (outcome.parents), recorded at once (a running step's lineage
    shows) and told to the display. A run with no kernel (the CLI's rerun) has no notebook to
    link within."""
    if outcome.kernel is None or not digests:
        outcome.parents = []
        return
    outcome.parents, names = lineage.find_parents(
        store, digests, kernel=outcome.kernel, run_id=outcome.run_id
    )
    store.update(outcome.run_id, parents=outcome.parents)
    events(Phase.LINKED, parents=outcome.parents, names=names)


def record_outcome(store, outcome: RunOutcome) -> None:
    """Record how a run that returned ended (a step's caller does, once it knows)."""
    end = record_end(outcome)
    try:
        store.update(outcome.run_id, **end)
    except StoreError:
        # The run is over: record that much, even when its output does not fit.
        try:
            status = "failed" if end["status"] == "done" else end["status"]
            store.update(
                outcome.run_id,
                status=status,
                reason="its output could not be saved",
                exit_code=end["exit_code"],
                finished=end["finished"],
            )
        except StoreError:
            pass
        raise


def request_stop(store, backend: Backend, run_id: str, grace: float = 0) -> bool:
    """Stop a run, from whichever front end: said in its record first, so that the kernel
    running it, seeing its container end, records it as stopped (not failed)."""
    if store is not None:
        from .store import ACTIVE_STATUSES  # sqlite3: not at `%load_ext`

        try:
            if store.get(run_id).get("status") in ACTIVE_STATUSES:
                store.update(run_id, stop_requested=True)
        except StoreError:
            pass  # a run with no record of its own
    return backend.stop(run_id, grace=grace)


# -- snapshot records (pure builders; the store writes them) -------------------------------


def record_start(spec: RunSpec, run_id: str, context: dict) -> dict:
    masked = spec.masked_env()
    spec_dict = spec.to_dict()
    spec_dict["env"] = sorted(masked.items())
    return {
        "id": run_id,
        "name": spec.name,
        "status": "building",
        "created": time.time(),
        "notebook": context.get("notebook"),
        "cell": context.get("cell"),
        "session": spec.session,
        "kernel": context.get("kernel"),
        "rerun_of": context.get("rerun_of"),
        "code": spec.code,
        "spec": spec_dict,
        "requirements": list(spec.env_spec.requirements),
        "captured": list(spec.captured),
        "apt": list(spec.env_spec.apt),
        "base_image": spec.env_spec.base_image,
        "env": masked,
        "resources": {
            "cpus": spec.cpus,
            "memory": spec.memory,
            "gpus": spec.gpus,
            "network": spec.network,
            "timeout": spec.timeout,
        },
        "host": host_info(),
        "versions": tool_versions(),
    }


def record_environment(env: Environment) -> dict:
    return {
        "env_image": env.image,
        "env_image_id": env.image_id,
        "image_size": env.size,
        "base_image_id": env.base_image_id,
        "lock": env.lock,
        "env_cached": env.cached,
    }


def record_end(outcome: RunOutcome) -> dict:
    r = outcome.result
    assert r is not None, "a run that ended has a result"
    status = {"done": "done", "killed": "failed"}.get(r.reason, r.reason)
    problems = output_errors(outcome)
    if status == "done" and problems:
        status = "failed"
    return {
        "status": status,
        "reason": "; ".join(problems) if problems else (r.message or r.reason),
        "exit_code": r.exit_code,
        "stdout": r.stdout,
        "stderr": r.stderr,
        "inputs": outcome.inputs,
        "parents": outcome.parents or [],
        "stdout_digest": text_digest(r.stdout),
        "outputs": outcome.outputs,
        "written": outcome.written,
        "finished": time.time(),
        "duration": outcome.timings.get("run"),
        "timings": outcome.timings,
        **({"map": outcome.map} if outcome.map is not None else {}),
    }


def text_digest(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()


def host_info() -> dict:
    return {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }


def tool_versions() -> dict:
    from importlib import metadata

    out = {}
    for name in ("mlcontainer-magics", "docker", "ipython"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


SMALL_OUTPUT = 16 * 2**20  # outputs up to this size are kept with the snapshot


def keep_inputs(folder: Path, workdir: Path, *, values: bool = True) -> None:
    """Inputs, code and manifest stay with the snapshot: rerun and export need them. Without
    ``values`` only code and manifest: a run keeps its inputs as it digests them
    (transfer.BackgroundDigests)."""
    try:
        if values:
            _link_tree(workdir / "in", folder / "in")
        for name in ("cell.py", "manifest.json"):
            shutil.copyfile(workdir / name, folder / name)
    except OSError as e:
        raise _not_kept("inputs", folder, e) from None


def _not_kept(what: str, folder: Path, e: OSError) -> StoreError:
    hint = (
        "Free some disk space on the drive holding it."
        if e.errno == errno.ENOSPC
        else "Check that you may write there, or set MLCONTAINER_STORE to another folder."
    )
    return StoreUnavailable(
        f"Could not keep the {what} of the snapshot in {folder}: {e.strerror or e}. {hint}"
    )


def keep_outputs(folder: Path, out_dir: Path, records: dict) -> None:
    try:
        _keep_outputs(folder, out_dir, records)
    except OSError as e:
        raise _not_kept("outputs", folder, e) from None


def _keep_outputs(folder: Path, out_dir: Path, records: dict) -> None:
    manifest = out_dir / "outputs.json"
    if not manifest.exists():
        return
    entries = json.loads(manifest.read_text())
    (folder / "out").mkdir(parents=True, exist_ok=True)
    for name, rec in records.items():
        entry = entries.get(name, {})
        if "file" in entry and rec.get("size", 0) <= SMALL_OUTPUT:
            _link(out_dir / entry["file"], folder / "out" / entry["file"])
    shutil.copyfile(manifest, folder / "out" / "outputs.json")


def _link_tree(src: Path, dst: Path) -> None:
    if not src.is_dir():
        return
    dst.mkdir(parents=True, exist_ok=True)
    for path in src.iterdir():
        _link(path, dst / path.name)


def _link(src: Path, dst: Path) -> None:
    # A hard link costs nothing for a 200 MB array; copy across filesystems.
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def remove_soon(folder: Path) -> None:
    """Remove a run's folder on another thread: freeing the pages of a few hundred MB of values
    takes tens of ms, which the cell's result need not wait for. Not a daemon thread: the
    interpreter waits for it at exit, so no folder is left in RAM."""
    threading.Thread(target=shutil.rmtree, args=(folder, True), name="mlcontainer-cleanup").start()


def _forget(store, run_id: str) -> None:
    try:
        store.remove(run_id)
    except Exception:  # the original error matters more than this cleanup
        pass


def output_errors(outcome: RunOutcome) -> list[str]:
    return [
        f"--out {name}: {rec['error']}" for name, rec in outcome.outputs.items() if "error" in rec
    ]


def outcome_error(outcome: RunOutcome) -> RunError | None:
    """The error a finished run raises, or None when it succeeded with all its outputs."""
    if not outcome.ok:
        return failure(outcome)
    problems = output_errors(outcome)
    if problems:
        return RunError("; ".join(problems), exit_code=0, reason="failed")
    return None


def failure(outcome: RunOutcome) -> RunError:
    """The error a failed run raises: one line of what happened, then the container's traceback."""
    r = outcome.result
    assert r is not None, "a run that ended has a result"
    what = REASONS.get(r.reason, r.reason)
    if r.reason == "timeout":
        head = f"Stopped after {outcome.spec.timeout:g} s (--timeout); the container was removed."
    elif r.reason == "oom":
        limit = f" of {outcome.spec.memory // 2**20} MiB" if outcome.spec.memory else ""
        head = f"Out of memory: the cell used more than its --memory limit{limit}."
    elif r.message:
        # The container never ran, or never reported an exit: the backend says why.
        head = r.message
    elif r.reason == "killed":
        head = (
            f"The container was killed from outside (exit code {r.exit_code}): something "
            "other than this kernel stopped it (docker kill or stop, a restart of the "
            "engine). Run the cell again."
        )
    else:
        head = f"The containerized cell {what} (exit code {r.exit_code})."
        if r.reason == "failed" and r.exit_code == VALUES_EXIT and MESSAGE_PREFIX in r.stderr:
            head += " " + r.stderr.split(MESSAGE_PREFIX, 1)[1].splitlines()[0]
    return RunError(head, exit_code=r.exit_code, logs=_traceback_tail(r.stderr), reason=r.reason)


def _traceback_tail(stderr: str, limit: int = 60) -> str:
    lines = stderr.rstrip().splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("Traceback")]
    if starts:
        lines = lines[starts[-1] :]
    return "\n".join(lines[-limit:])
