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
        run_cell(source, namespace, cell)
        flush_figures()
    except (SystemExit, Terminated):
        raise
    except CellError as e:
        sys.stderr.write(MESSAGE_PREFIX + "%s\n" % e)
        return VALUES_EXIT
    except BaseException as e:  # report any failure of user code as a traceback
        tb = e.__traceback__
        # Drop the runner's own frames so the traceback starts in the cell.
        while tb is not None and tb.tb_frame.f_code.co_filename != cell:
            tb = tb.tb_next
        traceback.print_exception(type(e), e, tb or e.__traceback__)
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


def main():
    import signal
    signal.signal(signal.SIGTERM, _on_sigterm)
    one_stream = os.environ.get(ONE_STREAM_ENV) == "1"
    if one_stream:
        sys.stderr = _MarkedStderr()
    try:
        _install_display()
        _matplotlib_backend()
        code = run_in(MLC, {"__name__": "__main__", "display": display})
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


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--standby":
        sys.exit(standby(sys.argv[2]))
    elif len(sys.argv) > 2 and sys.argv[1] == "--serve":
        serve(sys.argv[2])
    elif len(sys.argv) > 3 and sys.argv[1] == "--send":
        send_file(sys.argv[2], int(sys.argv[3]))
    elif len(sys.argv) > 2 and sys.argv[1] == "--collected":
        open(sys.argv[2], "a").close()
    else:
        sys.exit(main())
