"""Values across the container boundary, in formats that do not tie the two sides together.

numpy arrays as .npy, DataFrames as Parquet (when pyarrow is on both sides), plain data as JSON,
bytes as bytes; pickle only as a last resort, and only between equal Python major.minor.
The runner inside the container (runner/mlc_runner.py) implements the same formats.

Each value file's digest names its algorithm: ``xxh3-128:<hex>`` (about 9 GB/s on one core, so a
large value's digest costs next to nothing beside reading it), or ``sha256:<hex>`` in snapshots
recorded before. Both verify: a rerun digests each output as its record did (``digest_algorithm``).
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import sys
import types
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ..errors import SpecError

# The runner inside the container implements the same formats; it is the one definition.
from ..runner.mlc_runner import EXT, json_exact

PY = "{}.{}".format(*sys.version_info[:2])
# Of a value written as pickle (write_value), and of what measures one (check_inputs,
# encoded_size): the same bytes.
PICKLE_PROTOCOL = 4


def _is_ndarray(value) -> bool:
    np = sys.modules.get("numpy")
    return np is not None and type(value) in (np.ndarray, np.memmap) and not value.dtype.hasobject


def _is_dataframe(value) -> bool:
    pd = sys.modules.get("pandas")
    return pd is not None and type(value) is pd.DataFrame


def has_module(name: str) -> bool:
    from importlib.util import find_spec

    return find_spec(name) is not None


def host_capabilities() -> dict:
    """What the kernel can read back: the runner picks output formats from this."""
    return {
        "python": PY,
        "numpy": has_module("numpy"),
        "pyarrow": has_module("pyarrow"),
        "pandas": has_module("pandas"),
    }


def value_size(value) -> int:
    """About the bytes a value takes in its file: arrays, bytes, DataFrames and text; other
    values count as small (what it costs to know more is what writing them costs)."""
    if _is_ndarray(value):
        return int(value.nbytes)
    if isinstance(value, (bytes, bytearray, str)):
        return len(value)
    if _is_dataframe(value):
        return int(value.memory_usage(index=True, deep=False).sum())
    return 0


def encoded_size(value, limit: int | None = None) -> int:
    """About the bytes a value's file takes, at least: arrays, bytes, text and DataFrames as
    value_size says; plain data (JSON) as its JSON text. For a backend that bounds a payload
    (a map's items in a Kubernetes Secret) before anything is built.

    A value that would be pickled counts as 0 without ``limit`` (knowing would cost the
    pickling). With ``limit``, it is pickled as write_value pickles it, into a sink that only
    counts: its exact size when that is at most ``limit``; else a number over ``limit`` (by at
    most a pickle frame, ~64 KiB, or one large string or bytes), the pickling stopped there,
    so the cost is bounded by ``limit``, not by the value. A value pickle cannot write raises
    what pickle raises (check_inputs, run first, turns it into a clear SpecError)."""
    size = value_size(value)
    if size or isinstance(value, (bytes, bytearray)) or _is_ndarray(value):
        return size + (2 if isinstance(value, str) else 0)
    if json_exact(value):
        return len(json.dumps(value).encode("utf-8"))
    if limit is None or choose_format(value) != "pickle":
        return 0
    sink = _Counter(max(limit, 0))
    try:
        pickle.Pickler(sink, protocol=PICKLE_PROTOCOL).dump(value)
    except _OverLimit:
        pass
    return sink.count


class _OverLimit(Exception):
    """Raised by _Counter.write once past its limit: stops the pickling (private)."""


class _Counter:
    """A file-like that keeps no bytes: counts what is written, and with ``limit`` raises
    _OverLimit once the count is over it."""

    def __init__(self, limit: int | None = None) -> None:
        self.limit = limit
        self.count = 0

    def write(self, data) -> int:
        n = memoryview(data).nbytes  # bytes, or a bytearray's own buffer
        self.count += n
        if self.limit is not None and self.count > self.limit:
            raise _OverLimit
        return n


def choose_format(value, *, peer_pyarrow: bool = True) -> str:
    if isinstance(value, (bytes, bytearray)) and type(value) in (bytes, bytearray):
        return "bytes"
    if _is_ndarray(value):
        return "npy"
    if _is_dataframe(value) and peer_pyarrow and has_module("pyarrow"):
        return "parquet"
    if json_exact(value):
        return "json"
    return "pickle"


def write_value(value, folder: Path, name: str, fmt: str) -> Path:
    path = folder / f"{name}.{EXT[fmt]}"
    if fmt == "bytes":
        path.write_bytes(bytes(value))
    elif fmt == "json":
        path.write_text(json.dumps(value), encoding="utf-8")
    elif fmt == "npy":
        import numpy as np

        np.save(path, value, allow_pickle=False)
    elif fmt == "parquet":
        value.to_parquet(path)
    else:
        with path.open("wb") as f:
            pickle.dump(value, f, protocol=PICKLE_PROTOCOL)
    return path


def read_value(path: Path, fmt: str):
    if fmt == "bytes":
        return path.read_bytes()
    if fmt == "json":
        return json.loads(path.read_text(encoding="utf-8"))
    if fmt == "npy":
        import numpy as np

        return np.load(path, allow_pickle=False)
    if fmt == "parquet":
        import pandas as pd

        return pd.read_parquet(path)
    if fmt == "pickle":
        with path.open("rb") as f:
            return pickle.load(f)  # noqa: S301 - written by the run the user just started
    raise SpecError(f"Unknown value format {fmt!r}.")


DIGEST = "xxh3-128"  # of new records; the datatree's (mounted files') algorithm too
ALGORITHMS = ("xxh3-128", "sha256")  # what this version can verify
CHUNK = 1 << 20


def digest_algorithm(digest: str | None) -> str | None:
    """The algorithm a recorded digest names (``sha256`` of ``sha256:ab12...``)."""
    algo, sep, _ = (digest or "").partition(":")
    return algo if sep else None


def _hasher(algorithm: str):
    if algorithm == "xxh3-128":
        import xxhash  # a C extension, loaded on the first value: not at %load_ext

        return xxhash.xxh3_128()
    if algorithm == "sha256":
        return hashlib.sha256()
    raise SpecError(
        f"Unknown digest algorithm {algorithm!r}: this version knows {', '.join(ALGORITHMS)}. "
        "Upgrade mlcontainer-magics to verify a snapshot recorded by a newer one."
    )


def file_digest(path: Path, algorithm: str = DIGEST) -> str:
    """``<algorithm>:<hex>`` of the file's bytes."""
    h = _hasher(algorithm)
    buf = bytearray(CHUNK)  # reused: no new memory per block for a 200 MB file
    view = memoryview(buf)
    with path.open("rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(view[:n])
    return f"{algorithm}:{h.hexdigest()}"


def check_inputs(names, namespace: dict) -> dict:
    """The values named by --in, or a SpecError before anything is built."""
    missing = [n for n in names if n not in namespace]
    if missing:
        raise SpecError(
            f"--in {', '.join(missing)}: no such variable in the notebook; define "
            "it first or fix the name."
        )
    values = {n: namespace[n] for n in names}
    for name, value in values.items():
        if choose_format(value) == "pickle":
            probe = _MainFinder(_Counter(), protocol=PICKLE_PROTOCOL)
            try:
                probe.dump(value)
            except Exception as e:  # pickle raises many types for unpicklable values
                raise SpecError(
                    f"--in {name}: a {type(value).__name__} cannot be sent into a container "
                    f"({e}). Send plain data, numpy arrays, DataFrames or bytes."
                ) from None
            if probe.found:
                raise SpecError(
                    f"--in {name}: it needs {probe.found[0]}, defined in the notebook, which a "
                    "container does not have (pickle keeps only its name). Define it in the "
                    "cell, or send plain data, numpy arrays, DataFrames or bytes."
                )
    return values


class _MainFinder(pickle.Pickler):
    """Pickles to nowhere, noting functions and classes the kernel defined (module __main__):
    pickle stores only their names, which the container cannot look up."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.found: list[str] = []

    def reducer_override(self, obj):
        if (
            isinstance(obj, (type, types.FunctionType))
            and getattr(obj, "__module__", None) == "__main__"
        ):
            self.found.append(
                f"{'class' if isinstance(obj, type) else 'function'} "
                f"{getattr(obj, '__qualname__', '?')}"
            )
        return NotImplemented


def write_inputs(values: dict, folder: Path, *, digests: bool = True) -> dict:
    """Write each input; returns the manifest entries {name: {file, format, digest, size}}
    (without digests when ``digests`` is false: see BackgroundDigests)."""
    folder.mkdir(parents=True, exist_ok=True)
    entries = {}
    for name, value in values.items():
        fmt = choose_format(value)
        path = write_value(value, folder, name, fmt)
        entries[name] = {"file": f"in/{path.name}", "format": fmt, "size": path.stat().st_size}
        if digests:
            entries[name]["digest"] = file_digest(path)
        if fmt == "pickle":
            entries[name]["python"] = PY
    return entries


def copy_digest(src: Path, dst: Path, algorithm: str = DIGEST) -> str:
    """Copy ``src`` to ``dst`` and return its digest, reading it once."""
    h = _hasher(algorithm)
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    with src.open("rb", buffering=0) as f, dst.open("wb", buffering=0) as g:
        while n := f.readinto(buf):
            h.update(view[:n])
            g.write(view[:n])
    return f"{algorithm}:{h.hexdigest()}"


def keep_digest(src: Path, dst: Path | None) -> str:
    """The digest of ``src``; with ``dst``, the file is kept there too: a hard link where both
    are on one filesystem (free), else a copy made in the same pass as the digest."""
    if dst is None:
        return file_digest(src)
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:  # another filesystem (a run folder in RAM), or links not allowed
        return copy_digest(src, dst)
    return file_digest(src)


class BackgroundDigests:
    """The inputs' digests, taken on another thread while the container starts and runs, and
    with ``keep`` (a snapshot's folder) the input files kept there in the same pass. Hashing
    and copying release the GIL, so a large input costs the run next to no time. ``then``
    is called on that thread with {name: digest} once all are known (a run's lineage)."""

    def __init__(
        self,
        records: dict,
        workdir: Path,
        keep: Path | None = None,
        then: Callable[[dict], object] | None = None,
    ) -> None:
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mlcontainer-digest")
        self._futures = {
            name: pool.submit(
                keep_digest, workdir / rec["file"], keep / rec["file"] if keep else None
            )
            for name, rec in records.items()
        }
        # One worker: this runs after every digest is taken.
        self._then = pool.submit(_with_digests, self._futures, then) if then else None
        pool.shutdown(wait=False)

    def fill(self, records: dict) -> dict:
        """Wait for the digests (and ``then``) and put them into ``records``; returns
        ``records``. An OSError is a file that could not be kept; ``then``'s errors raise."""
        for name, future in self._futures.items():
            records[name]["digest"] = future.result()
        if self._then is not None:
            self._then.result()
        return records

    def wait(self) -> None:
        for future in [*self._futures.values(), self._then]:
            if future is not None:
                future.exception()  # done either way; a failure shows in fill()


def _with_digests(futures: dict, then: Callable[[dict], object]) -> None:
    then({name: future.result() for name, future in futures.items()})


def read_outputs(out_dir: Path, names, algorithms: dict | None = None) -> tuple[dict, dict]:
    """(values, records) for the --out names the runner wrote; errors are reported by the
    runner in outputs.json and raised by the caller. ``algorithms``: name -> the digest
    algorithm to take (a rerun's, as recorded), else ``DIGEST``."""
    manifest_path = out_dir / "outputs.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    values, records = {}, {}
    # Each file is hashed on another thread while it is read: two cores, one pass of time.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="mlcontainer-digest") as pool:
        for name in names:
            entry = manifest.get(name)
            if not entry or "error" in entry:
                records[name] = {"error": (entry or {}).get("error", "no value came back")}
                continue
            path = out_dir / entry["file"]
            digest = pool.submit(file_digest, path, (algorithms or {}).get(name, DIGEST))
            try:
                values[name] = read_value(path, entry["format"])
            except Exception as e:  # e.g. a pickled object whose module the kernel lacks
                records[name] = {
                    "error": f"it came back but cannot be read in the kernel "
                    f"({type(e).__name__}: {e}); install what it needs "
                    "in the kernel, or return plain data, arrays or "
                    "DataFrames"
                }
                continue
            records[name] = {
                "format": entry["format"],
                "digest": digest.result(),
                "size": path.stat().st_size,
            }
    return values, records
