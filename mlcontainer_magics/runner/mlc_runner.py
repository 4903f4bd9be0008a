"""Runs a notebook cell inside its container, as if it were a notebook cell.

Standard library only, Python 3.6+: it runs in whatever base image the user picked.
/mlc/manifest.json says which values come in (/mlc/in) and which go out (/mlc/out).
Rich output (display(), the last expression, matplotlib figures) goes to stdout as marked lines,
in order with the prints, and the kernel turns them back into display data.
"""
import ast
import base64
import hashlib
import json
import os
import pickle
import sys
import time
import traceback
import types

# -- the wire protocol with the host (mlcontainer_magics.runner re-exports these) -------------
MLC = "/mlc"  # the run's folder: runner.py, cell.py, manifest.json, in/, out/
CELL = MLC + "/cell.py"
OUT = MLC + "/out"
PREFIX = "\x1e\x1fmlc-"  # starts a marked line of stdout
MARK = PREFIX + "display:"  # + JSON {"data": bundle}: rich output
STDERR_MARK = PREFIX + "stderr:"  # + JSON text: stderr, in one-stream mode
# + JSON {"files": [{"name", "size", "sha256"}]}: one-stream mode, out/ is ready to be taken
# (over exec, --send); the runner waits for COLLECTED, for up to MLC_COLLECT_WAIT seconds.
OUTPUTS_MARK = PREFIX + "outputs:"
COLLECTED = MLC + "/collected"
TAKING = "taking"  # beside out/: touched as --send goes, so a long transfer is not cut short
COLLECT_WAIT_ENV = "MLC_COLLECT_WAIT"  # seconds without progress before the runner gives up
ONE_STREAM_ENV = "MLC_ONE_STREAM"  # "1": everything on stdout (a Kubernetes pod's one log)
# A map's item (manifest "map"): its position in the items; a Kubernetes Indexed Job sets
# only JOB_COMPLETION_INDEX. The cell then sees MLC_INDEX as the item's own index.
INDEX_ENV = "MLC_INDEX"
JOB_INDEX_ENV = "JOB_COMPLETION_INDEX"
MESSAGE_PREFIX = "mlcontainer: "  # starts a line of stderr that explains a values problem
VALUES_EXIT = 2  # the exit status that goes with it
TERM_EXIT = 143  # 128 + SIGTERM: the run was stopped by SIGTERM (a pod deleted, docker stop)
PY = "{}.{}".format(*sys.version_info[:2])
MAP_AT_LEAST = 1 << 20  # bytes of .npy from which an input array is mapped, not read
EXT = {"json": "json", "npy": "npy", "parquet": "parquet", "bytes": "bin", "pickle": "pkl"}
MIME_METHODS = [("text/html", "_repr_html_"), ("text/markdown", "_repr_markdown_"),
                ("image/svg+xml", "_repr_svg_"), ("image/png", "_repr_png_"),
                ("image/jpeg", "_repr_jpeg_"), ("text/latex", "_repr_latex_"),
                ("application/json", "_repr_json_")]


class CellError(Exception):
    """A problem with the values in or out; reported as one clear line."""


class Terminated(BaseException):
    """Raised in the cell by the first SIGTERM: the cell stops, its finally blocks run."""


# -- display --------------------------------------------------------------------------------

def mime_bundle(obj):
    bundle = {}
    method = getattr(obj, "_repr_mimebundle_", None)
    if callable(method):
        try:
            got = method()
            bundle.update(got[0] if isinstance(got, tuple) else (got or {}))
        except Exception:
            pass
    for mime, name in MIME_METHODS:
        fn = getattr(obj, name, None)
        if mime in bundle or not callable(fn) or isinstance(obj, type):
            continue
        try:
            value = fn()
        except Exception:
            continue
        if isinstance(value, tuple):
            value = value[0]
        if value is None:
            continue
        if isinstance(value, bytes):
            value = base64.b64encode(value).decode("ascii")
        bundle[mime] = value
    bundle.setdefault("text/plain", repr(obj))
    return bundle


def _write_mark(bundle):
    sys.__stdout__.write(MARK + json.dumps({"data": bundle}) + "\n")
    sys.__stdout__.flush()


_sink = [_write_mark]  # serve mode swaps in a socket writer


def publish(bundle):
    sys.stdout.flush()
    sys.stderr.flush()
    _sink[0](bundle)


def display(*objs, **kwargs):
    for obj in objs:
        if kwargs.get("raw"):
            publish(obj)
        else:
            publish(mime_bundle(obj))


class _Rich(object):
    """Stand-ins for IPython.display's classes, for images without IPython installed."""

    mime = "text/plain"

    def __init__(self, data=None, url=None, filename=None, **kwargs):
        if filename is not None:
            with open(filename, "rb") as f:
                data = f.read()
        self.data = data

    def _repr_mimebundle_(self, include=None, exclude=None):
        data = self.data
        if isinstance(data, bytes) and not self.mime.startswith("image/"):
            data = data.decode("utf-8")
        if isinstance(data, bytes):
            data = base64.b64encode(data).decode("ascii")
        return {self.mime: data, "text/plain": "<%s object>" % type(self).__name__}


def _ipython_display_shim():
    """A minimal IPython.display, so `from IPython.display import display, HTML` works."""
    mod = types.ModuleType("IPython.display")
    mod.display = display
    for name, mime in [("HTML", "text/html"), ("Markdown", "text/markdown"),
                       ("SVG", "image/svg+xml"), ("Latex", "text/latex"),
                       ("JSON", "application/json")]:
        setattr(mod, name, type(name, (_Rich,), {"mime": mime}))

    class Image(_Rich):
        def __init__(self, data=None, url=None, filename=None, format="png", **kwargs):
            _Rich.__init__(self, data, url, filename)
            self.mime = "image/jpeg" if format in ("jpg", "jpeg") else "image/png"

    mod.Image = Image
    pkg = types.ModuleType("IPython")
    pkg.display = mod
    pkg.get_ipython = lambda: None  # libraries probing for a shell see plain Python
    pkg.version_info = (0, 0, 0, "mlcontainer-shim")
    pkg.__path__ = []
    return {"IPython": pkg, "IPython.display": mod}


class _IPythonShimFinder(object):
    """Provides the shim only when the cell imports IPython (and IPython is not installed),
    so libraries that merely look for IPython in sys.modules never see it."""

    def __init__(self):
        self.modules = None

    def find_spec(self, name, path=None, target=None):
        if name not in ("IPython", "IPython.display"):
            return None
        import importlib.util
        return importlib.util.spec_from_loader(name, self)

    def create_module(self, spec):
        if self.modules is None:
            self.modules = _ipython_display_shim()
        return self.modules[spec.name]

    def exec_module(self, module):
        pass


def _install_display():
    try:
        import IPython.display as ipd  # noqa: F401  real IPython in the image: route through us
        ipd.display = display
        try:
            import IPython.core.display_functions as f
            f.display = display
        except ImportError:
            pass
    except ImportError:
        sys.meta_path.append(_IPythonShimFinder())
    import builtins
    builtins.display = display


def flush_figures():
    """Show every open matplotlib figure as PNG, then close it (as the inline backend does)."""
    plt = sys.modules.get("matplotlib.pyplot")
    if plt is None:
        return
    import io
    for num in plt.get_fignums():
        fig = plt.figure(num)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", bbox_inches="tight")
        publish({"image/png": base64.b64encode(buf.getvalue()).decode("ascii"),
                 "text/plain": "<Figure size %dx%d>" % tuple(fig.get_size_inches() * fig.dpi)})
    plt.close("all")


class _MplBackendFinder(object):
    """Makes `mlc_mpl` when matplotlib asks for it: Agg, with a show() that publishes the
    figures (MPLBACKEND=module://mlc_mpl). matplotlib reads the module's own attributes, and may
    not be installed at all, so the module is only assembled on import."""

    def find_spec(self, name, path=None, target=None):
        if name != "mlc_mpl":
            return None
        import importlib.util
        return importlib.util.spec_from_loader(name, self)

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        from matplotlib.backends import backend_agg
        module.__dict__.update((k, v) for k, v in vars(backend_agg).items()
                               if not k.startswith("__"))
        module.show = lambda *a, **k: flush_figures()


def _matplotlib_backend():
    sys.meta_path.append(_MplBackendFinder())
    os.environ["MPLBACKEND"] = "module://mlc_mpl"


# -- values ---------------------------------------------------------------------------------

def json_exact(value, depth=0):
    if depth > 100:
        return False
    if value is None or type(value) in (str, bool, int):
        return True
    if type(value) is float:
        return value == value and value not in (float("inf"), float("-inf"))
    if type(value) is list:
        return all(json_exact(v, depth + 1) for v in value)
    if type(value) is dict:
        return all(type(k) is str and json_exact(v, depth + 1) for k, v in value.items())
    return False


def read_value(entry, base=MLC):
    path = os.path.join(base, entry["file"])
    fmt = entry["format"]
    if fmt == "bytes":
        with open(path, "rb") as f:
            return f.read()
    if fmt == "json":
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    if fmt == "npy":
        try:
            import numpy as np
        except ImportError:
            raise CellError("a numpy array came in, but numpy is not installed in the container; "
                            "add -r numpy")
        # A large array is mapped, not read: pages come from the host's page cache as the cell
        # touches them, and a write goes to a private copy of the page (the file never changes).
        big = os.path.getsize(path) >= MAP_AT_LEAST
        return np.load(path, mmap_mode="c" if big else None, allow_pickle=False)
    if fmt == "parquet":
        try:
            import pandas as pd
        except ImportError:
            raise CellError("a DataFrame came in, but pandas is not installed in the container; "
                            "add -r pandas pyarrow")
        return pd.read_parquet(path)
    if entry.get("python") != PY:
        raise CellError("a pickled value from Python %s cannot be read by this container's "
                        "Python %s; send plain data, arrays or DataFrames, or use a base image "
                        "with Python %s" % (entry.get("python"), PY, entry.get("python")))
    with open(path, "rb") as f:
        return pickle.load(f)


def choose_format(value, host):
    if type(value) in (bytes, bytearray):
        return "bytes"
    np = sys.modules.get("numpy")
    if np is not None and type(value) in (np.ndarray, np.memmap) and not value.dtype.hasobject:
        return "npy" if host.get("numpy") else None
    pd = sys.modules.get("pandas")
    if pd is not None and type(value) is pd.DataFrame and host.get("pyarrow"):
        try:
            import pyarrow  # noqa: F401
            return "parquet"
        except ImportError:
            pass
    if json_exact(value):
        return "json"
    return "pickle" if host.get("python") == PY else None


RAM_RESERVE = 512 << 20  # memory left free when a value is written to a folder in RAM


def _in_memory(folder):
    """Whether ``folder`` is on a tmpfs (the host may put run folders in RAM): the
    last-mounted of the longest mount points above it."""
    best, fstype = "", ""
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                left, _, right = line.partition(" - ")
                point = left.split()[4].replace("\\040", " ")
                inside = folder == point or folder.startswith(point.rstrip("/") + "/")
                if inside and len(point) >= len(best) and right:
                    best, fstype = point, right.split()[0]
    except (OSError, IndexError):
        return False
    return fstype == "tmpfs"


def _memory_available():
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def no_room(value, out):
    """Why a large array or bytes value should not be written to ``out``, or None: in a folder
    in RAM it must leave RAM_RESERVE of memory free (the kernel then reads it into memory too)."""
    np = sys.modules.get("numpy")
    if type(value) in (bytes, bytearray):
        size = len(value)
    elif np is not None and isinstance(value, np.ndarray):
        size = value.nbytes
    else:
        return None
    if size < MAP_AT_LEAST or not _in_memory(out):
        return None
    available = _memory_available()
    if available is None or size + RAM_RESERVE <= available:
        return None
    return ("it is %d MB and the run's folder is in memory, with %d MB to spare; set "
            "MLCONTAINER_RUN_DIR to a folder on disk (e.g. /var/tmp) and run the cell again"
            % (size >> 20, max(available - RAM_RESERVE, 0) >> 20))


def write_outputs(names, namespace, host, out=OUT):
    result = {}
    for name in names:
        if name not in namespace:
            result[name] = {"error": "the cell never assigned %s" % name}
            continue
        value = namespace[name]
        fmt = choose_format(value, host)
        if fmt is None:
            result[name] = {"error": "a %s cannot go back to the kernel (Python %s there, %s "
                                     "here); return plain data, arrays or DataFrames"
                            % (type(value).__name__, host.get("python"), PY)}
            continue
        why = no_room(value, out)
        if why:
            result[name] = {"error": why}
            continue
        # "v-" keeps value files apart from outputs.json: `--out outputs` is a valid name.
        path = os.path.join(out, "v-%s.%s" % (name, EXT[fmt]))
        try:
            if fmt == "bytes":
                with open(path, "wb") as f:
                    f.write(bytes(value))
            elif fmt == "json":
                with open(path, "w", encoding="utf-8") as f:
                    json.dump(value, f)
            elif fmt == "npy":
                import numpy as np
                np.save(path, value, allow_pickle=False)
            elif fmt == "parquet":
                value.to_parquet(path)
            else:
                with open(path, "wb") as f:
                    pickle.dump(value, f, protocol=4)
        except Exception as e:
            result[name] = {"error": "%s could not be written: %s" % (name, e)}
            continue
        result[name] = {"file": os.path.basename(path), "format": fmt}
    with open(os.path.join(out, "outputs.json"), "w") as f:
        json.dump(result, f)


# -- the cell -------------------------------------------------------------------------------

def run_cell(source, namespace, filename=CELL):
    """Execute like a notebook cell: a final expression's value is displayed."""
    tree = ast.parse(source, filename)
    last = None
    if tree.body and isinstance(tree.body[-1], ast.Expr):
        last = ast.Expression(tree.body.pop().value)
    exec(compile(tree, filename, "exec"), namespace)
    if last is not None:
        value = eval(compile(last, filename, "eval"), namespace)
        if value is not None:
            publish(mime_bundle(value))


def _from_cell(tb, cell):
    """The traceback ``tb`` without the runner's own frames: it starts in the cell."""
    start = tb
    while start is not None and start.tb_frame.f_code.co_filename != cell:
        start = start.tb_next
    return start or tb


def map_item(mapped, environ=None):
    """(name, entry) of the item this container runs, of the manifest's "map" block, and
    MLC_INDEX set to the item's own index (a rerun of one item keeps its index)."""
    environ = os.environ if environ is None else environ
    text = environ.get(INDEX_ENV) or environ.get(JOB_INDEX_ENV)
    items = mapped.get("items") or []
    if text is None:  # e.g. `docker run IMAGE` of an exported map
        raise CellError("--map %s: this image runs one item of the %d at a time, the one %s "
                        "says, and %s is unset: run e.g. `docker run --rm -e %s=0 IMAGE` "
                        "(0 to %d), or every item with the export's run-items.sh"
                        % (mapped.get("name"), len(items), INDEX_ENV, INDEX_ENV, INDEX_ENV,
                           len(items) - 1))
    try:
        position = int(text)
    except (TypeError, ValueError):
        raise CellError("--map %s: this container runs one item, but %s (or %s) is %r; set it "
                        "to the item's position, 0 to %d"
                        % (mapped.get("name"), INDEX_ENV, JOB_INDEX_ENV, text, len(items) - 1))
    if not 0 <= position < len(items):
        raise CellError("--map %s: %s=%d, but there are %d items (0 to %d)"
                        % (mapped.get("name"), INDEX_ENV, position, len(items), len(items) - 1))
    entry = items[position]
    environ[INDEX_ENV] = str(entry.get("index", position))
    return mapped["name"], entry


def run_in(base, namespace):
    """Run base/cell.py with base/manifest.json's values in ``namespace``; exit status."""
    cell = os.path.join(base, "cell.py")
    with open(cell, encoding="utf-8") as f:
        source = f.read()
    manifest = {}
    if os.path.exists(os.path.join(base, "manifest.json")):
        with open(os.path.join(base, "manifest.json")) as f:
            manifest = json.load(f)
    namespace["__file__"] = cell
    try:
        for name, entry in manifest.get("inputs", {}).items():
            try:
                namespace[name] = read_value(entry, base)
            except CellError as e:
                raise CellError("--in %s: %s" % (name, e))
            except Exception as e:  # e.g. a pickled object whose module the container lacks
                raise CellError("--in %s cannot be read in the container (%s: %s); install "
                                "what it needs with -r, or send plain data, arrays or "
                                "DataFrames" % (name, type(e).__name__, e))
        if manifest.get("map"):
            name, entry = map_item(manifest["map"])
            try:
                namespace[name] = read_value(entry, base)
            except CellError as e:
                raise CellError("--map %s: %s" % (name, e))
            except Exception as e:  # as an --in value's: what the item needs is missing
                raise CellError("--map %s: item %s cannot be read in the container (%s: %s)"
                                % (name, os.environ[INDEX_ENV], type(e).__name__, e))
        run_cell(source, namespace, cell)
        flush_figures()
    except (SystemExit, Terminated):
        raise
    except CellError as e:
        sys.stderr.write(MESSAGE_PREFIX + "%s\n" % e)
        return VALUES_EXIT
    except BaseException as e:  # report any failure of user code as a traceback
        traceback.print_exception(type(e), e, _from_cell(e.__traceback__, cell))
        sys.stderr.flush()
        return 130 if isinstance(e, KeyboardInterrupt) else 1
    if manifest.get("outputs") and not _term["signals"]:  # stopped: no values go back
        write_outputs(manifest["outputs"], namespace, manifest.get("host", {}),
                      os.path.join(base, "out"))
    return 0


class _MarkedStderr(object):
    """One-stream mode (Kubernetes logs mix the streams): stderr as marked stdout lines."""

    def write(self, text):
        if text:
            sys.__stdout__.write(STDERR_MARK + json.dumps(text) + "\n")
            sys.__stdout__.flush()
        return len(text)

    def flush(self):
        pass


def out_offer(out):
    """The files of out/, each with its size and SHA-256."""
    files = []
    for name in sorted(os.listdir(out)):
        path = os.path.join(out, name)
        if os.path.isfile(path):
            digest, size = hashlib.sha256(), 0
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
                    size += len(block)
            files.append({"name": name, "size": size, "sha256": digest.hexdigest()})
    return {"files": files}


def offer_out_files(out):
    """One-stream mode: offer the files of out/ and wait until the host has taken them. They do
    not travel in the log: the kubelet rotates it, and a reconnect cannot read back what went."""
    offer = out_offer(out)
    if not offer["files"]:
        return
    sys.__stdout__.write(OUTPUTS_MARK + json.dumps(offer) + "\n")
    sys.__stdout__.flush()
    wait = float(os.environ.get(COLLECT_WAIT_ENV) or 120)
    taking = os.path.join(os.path.dirname(out), TAKING)
    seen, since = None, time.monotonic()
    while not os.path.exists(COLLECTED):
        try:
            now = os.stat(taking).st_mtime
        except OSError:
            now = None
        if now != seen:
            seen, since = now, time.monotonic()
        elif time.monotonic() - since > wait:
            sys.stderr.write(MESSAGE_PREFIX + "nobody took the --out values within %g s\n" % wait)
            return
        time.sleep(0.02)


def send_file(path, offset):
    """--send PATH OFFSET: the bytes of a file of out/ from OFFSET on, to stdout (exec)."""
    out = getattr(sys.stdout, "buffer", sys.stdout)
    taking = os.path.join(os.path.dirname(os.path.dirname(path)), TAKING)
    with open(path, "rb") as f:
        f.seek(offset)
        for i, block in enumerate(iter(lambda: f.read(1 << 20), b"")):
            if i % 64 == 0:  # the runner waits while this moves
                with open(taking, "a"):
                    os.utime(taking, None)
            out.write(block)
    out.flush()


# -- SIGTERM: a pod deleted, `docker stop` --------------------------------------------------
# Without an init process (a Kubernetes pod) the runner is PID 1, and PID 1 ignores SIGTERM unless
# it handles it: the run would go on until the grace period ends in SIGKILL.

# The SIGTERMs main() received; the line said? past the cell, waiting for its threads to end?
_term = {"signals": 0, "said": False, "exiting": False}
EXIT_GRACE = 3.0  # seconds that exiting may take once stopped (a non-daemon thread, atexit)


def _flush_streams():
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        try:
            stream.flush()
        except Exception:  # e.g. a reentrant call: the signal came in the middle of a write
            pass


def _say_stopped():
    """The one line that says why the run ended (a marked line of stdout in one-stream mode)."""
    if _term["said"]:
        return
    _term["said"] = True
    _flush_streams()
    line = MESSAGE_PREFIX + "stopped by SIGTERM\n"
    try:
        sys.stderr.write(line)
    except Exception:  # interrupted in the middle of a write: go around the stream
        try:
            os.write(2, line.encode("utf-8"))
        except OSError:
            pass
    _flush_streams()


def _hard_exit():
    _say_stopped()
    os._exit(TERM_EXIT)


def _on_sigterm(signum, frame):
    _term["signals"] += 1
    if _term["signals"] > 1 or _term["exiting"]:  # the cell swallowed the first, or is over
        _hard_exit()
    raise Terminated()


def _stopped():
    """After the first SIGTERM: the cell has stopped (its finally blocks ran); no values go back.
    If exiting then hangs (a non-daemon thread of the cell, an atexit handler), end anyway."""
    _say_stopped()
    import threading
    timer = threading.Timer(EXIT_GRACE, _hard_exit)
    timer.daemon = True
    timer.start()
    return TERM_EXIT


def main(namespace=None):
    """Run the cell in ``namespace`` (a fresh one unless given: --http then calls into it)."""
    import signal
    signal.signal(signal.SIGTERM, _on_sigterm)
    one_stream = os.environ.get(ONE_STREAM_ENV) == "1"
    if one_stream:
        sys.stderr = _MarkedStderr()
    if namespace is None:
        namespace = {}
    namespace.update({"__name__": "__main__", "display": display})
    try:
        _install_display()
        _matplotlib_backend()
        code = run_in(MLC, namespace)
        if one_stream and not _term["signals"]:
            sys.stdout.flush()
            offer_out_files(OUT)
    except BaseException:  # Terminated, or what the cell did when it caught it (sys.exit...)
        if not _term["signals"]:
            raise
    if _term["signals"]:  # also when the cell caught Terminated and went on to the end
        return _stopped()
    _term["exiting"] = True  # its values are back; a non-daemon thread of it may yet run
    return code


# -- warm sessions: one interpreter serving many cells ----------------------------------------

class _FrameWriter(object):
    """A text stream that sends what is written as frames on the session socket."""

    def __init__(self, send, stream):
        self._send, self._stream = send, stream

    def write(self, text):
        if text:
            self._send({"s": self._stream, "t": text})
        return len(text)

    def flush(self):
        pass

    def isatty(self):
        return False


def serve(path):
    """Listen on a Unix socket in the run's folder; each connection runs one cell.

    The kernel writes one JSON line {"dir": ...}; we answer with JSON lines: {"s", "t"} for
    output, {"d"} for display data, and {"exit"} last. State persists between cells.
    """
    import signal
    import socket
    import threading

    _install_display()
    _matplotlib_backend()
    namespace = {"__name__": "__main__", "display": display}
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    if os.path.exists(path):
        os.unlink(path)
    server.bind(path + ".new")
    os.rename(path + ".new", path)  # appears only when it accepts: the kernel waits for it
    server.listen(1)
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
    while True:
        conn, _ = server.accept()
        lock = threading.Lock()

        def send(frame, conn=conn, lock=lock):
            data = (json.dumps(frame) + "\n").encode("utf-8")
            with lock:
                try:
                    conn.sendall(data)
                except OSError:
                    pass  # the kernel went away; the cell still finishes

        request = conn.makefile("r", encoding="utf-8").readline()
        if not request:
            conn.close()
            continue
        base = json.loads(request)["dir"]
        sys.stdout = _FrameWriter(send, "stdout")
        sys.stderr = _FrameWriter(send, "stderr")
        _sink[0] = lambda bundle: send({"d": bundle})
        try:
            code = run_in(base, namespace)
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        finally:
            sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__
            _sink[0] = _write_mark
        send({"exit": code})
        conn.close()


# -- standby: started before its cell is known -----------------------------------------------

# + JSON {"exit": status, "oom": kills}: the last line of stdout and of stderr of a standby's
# run. The engine takes a tenth of a second more to report the container's end (network
# teardown); the host, having both lines, knows all the output and the exit status already.
END_MARK = PREFIX + "end:"
OOM_FILES = ("/sys/fs/cgroup/memory/memory.oom_control", "/sys/fs/cgroup/memory.events")


def wait_for_go(path):
    """Wait, blocked (no CPU) in open() and then read() of the FIFO ``path``, until the host
    writes "go": the run's folder is filled then. End of file instead: not needed after all."""
    with open(path) as f:
        return f.readline().strip() == "go"


def oom_kills():
    """How many processes the container's memory limit killed (None: cannot tell)."""
    for path in OOM_FILES:
        try:
            with open(path) as f:
                for line in f:
                    if line.startswith("oom_kill "):
                        return int(line.split()[1])
        except (OSError, ValueError):
            continue
    return None


def _say_end(state):
    if "code" not in state or _term["signals"]:
        return  # stopped, or ended by an exception: the engine says how
    _flush_streams()
    line = END_MARK + json.dumps({"exit": state["code"], "oom": oom_kills()}) + "\n"
    for stream in (sys.__stderr__, sys.__stdout__):
        try:
            stream.write(line)
            stream.flush()
        except Exception:
            pass


def standby(path):
    """A standby's runner: wait for the go, then run the cell as main() does, and say how it
    ended as the very last thing (an atexit function registered before the cell's own runs
    after them, and after the cell's non-daemon threads have ended)."""
    if not wait_for_go(path):
        return 0
    import atexit
    state = {}
    atexit.register(_say_end, state)
    state["code"] = main()
    return state["code"]


# -- HTTP: the cell served as a function (--http PORT) ---------------------------------------
# The cell runs once as main() runs it; then its entry function answers POST /predict, a thread
# per request (it may run concurrently). Bodies use the formats of --in/--out values. The
# kernel's proxy, an export's `docker run -p` and a Kubernetes Service all talk to this.

CONTAINER_PORT = 8080  # where the server listens inside the container
# --http unix:PATH: on a Unix socket instead (a container without a network, reached through
# the run's folder); its serving line says {"port": null, "socket": PATH, ...}
UNIX_PREFIX = "unix:"
SERVING_MARK = PREFIX + "serving:"  # + JSON {"port", "entry", "signature"}: ready for requests
DEFAULT_ENTRY = "predict"
MAX_BODY = 1 << 30  # bytes: a larger request body is refused (413) before it is read
DRAIN_SECONDS = 10.0  # after SIGTERM, how long the requests in flight may take to finish
REQUEST_IDLE = 120  # seconds a connection may stay silent before its thread gives up on it
BODY_TYPES = {"json": "application/json", "npy": "application/x-npy",
              "parquet": "application/vnd.apache.parquet", "bytes": "application/octet-stream"}
_TYPE_FORMATS = {"application/json": "json", "application/x-npy": "npy",
                 "application/vnd.apache.parquet": "parquet", "application/x-parquet": "parquet"}
# What a body may be sent as, whoever reads it: never pickle (reading one runs its code).
_ANY_READER = {"numpy": True, "pyarrow": True}
_NEEDS = {"npy": ("numpy",), "parquet": ("pandas", "pyarrow")}


class HttpError(Exception):
    """A request that gets an error answer: its HTTP status and JSON payload."""

    def __init__(self, status, message, **extra):
        Exception.__init__(self, message)
        self.status = status
        self.payload = {"error": message}
        self.payload.update(extra)


def body_format(content_type):
    """The value format of a Content-Type: json, npy, parquet, or bytes for any other."""
    media = (content_type or "").split(";")[0].strip().lower()
    return _TYPE_FORMATS.get(media, "bytes")


def decode_body(body, content_type):
    """The value in ``body``, read by its Content-Type. HttpError 400 if it is not what the type
    says; 415 (payload "needs": [modules]) if this Python lacks the library that reads it."""
    import io
    fmt = body_format(content_type)
    if fmt == "bytes":
        return body
    if fmt == "json":
        try:
            return json.loads(body.decode("utf-8"))
        except ValueError as e:  # UnicodeDecodeError is one too
            raise HttpError(400, "the body is not JSON (%s); send JSON, or set the Content-Type "
                                 "to what it is" % e)
    needs = _NEEDS[fmt]
    try:
        for module in needs:
            __import__(module)
    except ImportError:
        raise HttpError(415, "a %s body needs %s to be read, and this Python lacks it"
                        % (content_type, " and ".join(needs)), needs=list(needs))
    try:
        if fmt == "npy":
            return sys.modules["numpy"].load(io.BytesIO(body), allow_pickle=False)
        return sys.modules["pandas"].read_parquet(io.BytesIO(body))
    except Exception as e:
        raise HttpError(400, "the body is not %s (%s: %s)" % (content_type, type(e).__name__, e))


def _jsonable(obj):
    """json.dumps's default=: numpy arrays and scalars as lists and numbers, DataFrames as
    records, dates as ISO 8601."""
    pd = sys.modules.get("pandas")
    if pd is not None and isinstance(obj, pd.DataFrame):
        return obj.to_dict(orient="records")
    if hasattr(obj, "dtype") and hasattr(obj, "tolist"):
        return obj.tolist()
    if hasattr(obj, "isoformat"):
        return obj.isoformat()
    raise TypeError("a %s is not JSON" % type(obj).__name__)


def encode_value(value, want_json=False):
    """(Content-Type, body) for a value: the format --out gives it (JSON, .npy, Parquet, bytes),
    or JSON (arrays as lists, DataFrames as records) if ``want_json`` or it has no other."""
    import io
    fmt = choose_format(value, _ANY_READER)
    if want_json and fmt in ("npy", "parquet"):
        fmt = None
    if fmt == "bytes":
        return BODY_TYPES["bytes"], bytes(value)
    if fmt in ("npy", "parquet"):
        buf = io.BytesIO()
        try:
            if fmt == "npy":
                sys.modules["numpy"].save(buf, value, allow_pickle=False)
            else:
                value.to_parquet(buf)
        except Exception as e:  # e.g. a DataFrame whose column names are not strings
            raise HttpError(500, "a %s cannot be sent as %s (%s: %s)"
                            % (type(value).__name__, BODY_TYPES[fmt], type(e).__name__, e))
        return BODY_TYPES[fmt], buf.getvalue()
    try:
        text = json.dumps(value, default=_jsonable, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise HttpError(500, "a %s cannot be sent as JSON (%s); use plain data (dicts, lists, "
                             "numbers, strings; no NaN), bytes, a numpy array or a DataFrame"
                        % (type(value).__name__, e))
    return BODY_TYPES["json"], text.encode("utf-8")


class _Service(object):
    """What the request threads share: the entry function, the access log and the counters
    /metadata shows."""

    def __init__(self, function, entry, serve, log):
        self.function, self.entry, self.serve, self.log = function, entry, serve, log
        try:
            import inspect
            self.signature = entry + str(inspect.signature(function))
        except (TypeError, ValueError):  # a builtin or C function without one
            self.signature = entry + "(...)"
        self.entry_paths = ("/", "/" + DEFAULT_ENTRY, "/" + entry)
        self.started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        import threading
        self.lock = threading.Condition()
        self.requests = self.errors = self.in_flight = 0

    def metadata(self):
        with self.lock:
            counts = {"requests": self.requests, "errors": self.errors}
        meta = {"name": self.serve.get("name"), "snapshot": self.serve.get("snapshot"),
                "lock_digest": self.serve.get("lock_digest"), "entry": self.entry,
                "signature": self.signature, "started": self.started, "python": PY}
        meta.update(counts)
        return meta

    def routes(self):
        return ["POST /" + self.entry, "GET /healthz", "GET /metadata"]

    def call(self, value, cell=CELL):
        """The entry function's answer to ``value``; an exception in it is a 500 with its
        traceback (also written to the log)."""
        try:
            return self.function(value)
        except BaseException as e:  # whatever user code raises, the server answers and stays
            lines = traceback.format_exception(type(e), e, _from_cell(e.__traceback__, cell))
            sys.stderr.write("".join(lines))
            raise HttpError(500, "%s raised %s: %s" % (self.entry, type(e).__name__, e),
                            type=type(e).__name__, traceback="".join(lines))

    def counted(self, delta_in_flight, error=None):
        with self.lock:
            self.in_flight += delta_in_flight
            if error is not None:
                self.requests += 1
                self.errors += error
            self.lock.notify_all()

    def drain(self, seconds):
        """Wait until no request is in flight, for at most ``seconds``; whether none is."""
        deadline = time.monotonic() + seconds
        with self.lock:
            while self.in_flight and time.monotonic() < deadline:
                self.lock.wait(deadline - time.monotonic())
            return not self.in_flight


class _AccessLog(object):
    """The server's one line per request, written by a thread of its own: a request never
    waits for the log (the container engine reads it through a pipe, which may be slow), and
    the lines that come meanwhile leave together, in one write every FLUSH_EVERY s at most."""

    FLUSH_EVERY = 0.05

    def __init__(self, stream):
        import queue
        import threading
        self.stream = stream
        self.lines = getattr(queue, "SimpleQueue", queue.Queue)()  # SimpleQueue: 3.7+
        self.thread = threading.Thread(target=self._write, name="mlc-access-log")
        self.thread.daemon = True
        self.thread.start()

    def add(self, line):
        self.lines.put(line)

    def close(self, timeout=5.0):
        """Write what is still queued, then end the writer."""
        self.lines.put(None)
        self.thread.join(timeout)

    def _write(self):
        import queue
        while True:
            batch = [self.lines.get()]
            try:
                while batch[-1] is not None:
                    batch.append(self.lines.get_nowait())
            except queue.Empty:
                pass
            text = "".join(line for line in batch if line is not None)
            try:
                if text:
                    self.stream.write(text)
                    self.stream.flush()
            except (OSError, ValueError):  # the log went away: the requests are still served
                pass
            if batch[-1] is None:
                return
            time.sleep(self.FLUSH_EVERY)


def _http_handler(service):
    from http.server import BaseHTTPRequestHandler

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"  # one answer per connection: a replaced server keeps none
        server_version = "mlcontainer"
        timeout = REQUEST_IDLE
        disable_nagle_algorithm = True  # headers and body leave at once, not 40 ms apart

        def handle(self):
            service.counted(+1)
            try:
                BaseHTTPRequestHandler.handle(self)
            finally:
                service.counted(-1)

        def do_GET(self):
            self.answer()

        do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = do_GET

        def answer(self):
            start = time.monotonic()
            path = self.path.split("?", 1)[0]
            is_call = path in service.entry_paths
            self.body_read = False
            try:
                status, ctype, body = 200, BODY_TYPES["json"], None
                if is_call:
                    ctype, body = self.call(path)
                elif path in ("/healthz", "/metadata"):
                    self.allow("GET", path, "read it with GET %s" % path)
                    answer = {"status": "ok"} if path == "/healthz" else service.metadata()
                    body = json.dumps(answer).encode("utf-8")
                else:
                    raise HttpError(404, "there is no %s here; the routes are %s"
                                    % (path, ", ".join(service.routes())),
                                    routes=service.routes())
            except HttpError as e:
                status, ctype = e.status, BODY_TYPES["json"]
                body = json.dumps(e.payload).encode("utf-8")
                self.allowed = e.payload.get("allow")  # 405's Allow header
            except Exception as e:  # a fault of the server itself: answer it, stay up
                status, ctype = 500, BODY_TYPES["json"]
                body = json.dumps({"error": "the server failed: %s: %s"
                                   % (type(e).__name__, e)}).encode("utf-8")
            if is_call and self.command == "POST":
                service.counted(0, error=status >= 400)
            self.send(status, ctype, body)
            service.log.add("%s %s %d %.1f ms\n" % (self.command, self.path, status,
                                                    (time.monotonic() - start) * 1000))

        def allow(self, method, path, hint):
            if self.command != method:
                raise HttpError(405, "%s %s is not served; %s" % (self.command, path, hint),
                                allow=method)

        def call(self, path):
            self.allow("POST", path, "send the value with POST /%s" % service.entry)
            want_json = "application/json" in (self.headers.get("Accept") or "")
            ctype = self.headers.get("Content-Type")
            try:
                value = decode_body(self.read_body(), ctype)
            except HttpError as e:
                if e.status == 415:
                    e.payload["error"] += ("; serve the cell with -r %s, or send JSON"
                                           % " ".join(e.payload["needs"]))
                raise
            result = service.call(value)
            return encode_value(result, want_json or body_format(ctype) == "json")

        def read_body(self):
            length = self.headers.get("Content-Length")
            if length is None:
                raise HttpError(411, "the request has no Content-Length; send the body with one "
                                     "(chunked bodies are not read)")
            try:
                size = int(length)
                if size < 0:
                    raise ValueError(length)
            except ValueError:
                raise HttpError(400, "Content-Length %r is not a number of bytes" % length)
            if size > MAX_BODY:
                raise HttpError(413, "the body is %d bytes; at most %d (1 GiB) are read: send "
                                     "less at a time" % (size, MAX_BODY))
            body = self.rfile.read(size)
            self.body_read = True
            if len(body) < size:
                raise HttpError(400, "the body ended after %d of its %d bytes" % (len(body), size))
            return body

        def send(self, status, ctype, body):
            self.discard_body()
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            if getattr(self, "allowed", None):
                self.send_header("Allow", self.allowed)
            self.end_headers()
            if self.command != "HEAD":
                try:
                    self.wfile.write(body)
                except OSError:  # the client went away; the next one is served all the same
                    pass

        def discard_body(self):
            """Read a small unread body before answering: closing a socket with data unread
            resets the connection, and the client might never see the answer."""
            if self.body_read:
                return
            try:
                size = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                return
            if 0 < size <= 1 << 20:
                self.rfile.read(size)
                self.body_read = True

        def send_error(self, code, message=None, explain=None):
            # Malformed requests, which BaseHTTPRequestHandler answers itself: JSON too.
            self.body_read = True
            body = json.dumps({"error": message or explain or "bad request"}).encode("utf-8")
            self.send(code, BODY_TYPES["json"], body)
            # (a request line too long to read leaves no path)
            service.log.add("%s %s %d\n" % (self.command, getattr(self, "path", ""), code))

        def log_message(self, format, *args):
            pass  # answer() writes the one line per request

        def setup(self):
            # TCP_NODELAY is TCP's: a Unix socket's connection has no Nagle to turn off.
            if not isinstance(self.client_address, tuple):  # a Unix socket's: no address
                self.disable_nagle_algorithm = False
            BaseHTTPRequestHandler.setup(self)

        def address_string(self):
            # A Unix socket's client has no (host, port) but "" (or the path it is bound to).
            return self.client_address[0] if isinstance(self.client_address, tuple) else "unix"

    return Handler


def _http_server(address, handler):
    """A threading HTTP server on ``address``: (host, port), or (host, "unix:PATH") for a Unix
    socket at PATH, which any user may connect to (the host's user is rarely the container's;
    who reaches the run's folder is who could reach a port of 127.0.0.1)."""
    import http.server
    import socket
    unix = str(address[1]).startswith(UNIX_PREFIX)
    base = getattr(http.server, "ThreadingHTTPServer", None)
    if base is None:  # Python 3.6
        import socketserver

        class base(socketserver.ThreadingMixIn, http.server.HTTPServer):
            daemon_threads = True

    class Server(base):
        request_queue_size = 128  # many clients connect at once
        daemon_threads = True  # a request still running at exit does not hold the process

        address_family = socket.AF_UNIX if unix else socket.AF_INET

        def server_bind(self):
            # HTTPServer's looks the host's name up (getfqdn), which can hang without DNS.
            import socketserver
            if unix and os.path.exists(self.server_address):
                os.unlink(self.server_address)  # left by a server that was killed
            socketserver.TCPServer.server_bind(self)
            if unix:
                os.chmod(self.server_address, 0o666)
                self.server_name, self.server_port = "localhost", 0
            else:
                self.server_name, self.server_port = self.server_address[:2]

    return Server(address[1][len(UNIX_PREFIX):] if unix else address, handler)


def serve_http(port=CONTAINER_PORT, host="0.0.0.0"):
    """--http PORT [HOST]: run the cell as main() does; then serve its entry function until
    SIGTERM, which stops accepting, lets the requests in flight finish (DRAIN_SECONDS) and
    exits 0. Port 0 takes a free one (the serving line says which). ``port`` "unix:PATH"
    (--http unix:PATH): on a Unix socket at PATH instead."""
    import signal
    namespace = {}
    code = main(namespace)
    if code:
        return code
    manifest = {}
    if os.path.exists(os.path.join(MLC, "manifest.json")):
        with open(os.path.join(MLC, "manifest.json")) as f:
            manifest = json.load(f)
    serve = manifest.get("serve") or {}
    entry = serve.get("entry") or DEFAULT_ENTRY
    function = namespace.get(entry)
    if not callable(function):
        sys.stderr.write(MESSAGE_PREFIX + "the cell defines no function %s(...); define it to "
                         "take the request's value and return the answer\n" % entry)
        return VALUES_EXIT
    service = _Service(function, entry, serve, _AccessLog(sys.stderr))
    server = _http_server((host, port), _http_handler(service))

    def on_sigterm(signum, frame):
        if _term["signals"]:
            _hard_exit()  # a second SIGTERM: do not wait for the requests any longer
        _term["signals"] += 1
        import threading
        threading.Thread(target=server.shutdown).start()  # it waits for serve_forever's loop

    signal.signal(signal.SIGTERM, on_sigterm)
    if isinstance(server.server_address, tuple):
        where = {"port": server.server_address[1]}
    else:
        where = {"port": None, "socket": server.server_address}
    where.update(entry=entry, signature=service.signature)
    sys.stdout.write(SERVING_MARK + json.dumps(where) + "\n")
    sys.stdout.flush()
    server.serve_forever()
    server.server_close()  # no new connections from here on
    if not service.drain(DRAIN_SECONDS):
        sys.stderr.write(MESSAGE_PREFIX + "%d request(s) still running after %g s; "
                                          "exiting anyway\n" % (service.in_flight, DRAIN_SECONDS))
    service.log.close()
    _flush_streams()
    # A thread the cell started and never ended (not a daemon) would hold the exit: not long.
    import threading
    timer = threading.Timer(EXIT_GRACE, os._exit, (0,))
    timer.daemon = True
    timer.start()
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--standby":
        sys.exit(standby(sys.argv[2]))
    elif len(sys.argv) > 2 and sys.argv[1] == "--http":
        where = sys.argv[2]
        sys.exit(serve_http(where if where.startswith(UNIX_PREFIX) else int(where), *sys.argv[3:4]))
    elif len(sys.argv) > 2 and sys.argv[1] == "--serve":
        serve(sys.argv[2])
    elif len(sys.argv) > 3 and sys.argv[1] == "--send":
        send_file(sys.argv[2], int(sys.argv[3]))
    elif len(sys.argv) > 2 and sys.argv[1] == "--collected":
        open(sys.argv[2], "a").close()
    else:
        sys.exit(main())
