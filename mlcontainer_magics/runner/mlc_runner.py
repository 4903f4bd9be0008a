"""Runs a notebook cell inside its container, as if it were a notebook cell.

Standard library only, Python 3.6+: it runs in whatever base image the user picked.
/mlc/manifest.json says which values come in (/mlc/in) and which go out (/mlc/out).
Rich output (display(), the last expression, matplotlib figures) goes to stdout as marked lines,
in order with the prints, and the kernel turns them back into display data.
"""
import ast
import base64
import json
import os
import pickle
import sys
import traceback
import types

MLC = "/mlc"
CELL = MLC + "/cell.py"
OUT = MLC + "/out"
MARK = "\x1e\x1fmlc-display:"
PY = "{}.{}".format(*sys.version_info[:2])
EXT = {"json": "json", "npy": "npy", "parquet": "parquet", "bytes": "bin", "pickle": "pkl"}
MIME_METHODS = [("text/html", "_repr_html_"), ("text/markdown", "_repr_markdown_"),
                ("image/svg+xml", "_repr_svg_"), ("image/png", "_repr_png_"),
                ("image/jpeg", "_repr_jpeg_"), ("text/latex", "_repr_latex_"),
                ("application/json", "_repr_json_")]


class CellError(Exception):
    """A problem with the values in or out; reported as one clear line."""


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


def publish(bundle):
    sys.stdout.flush()
    sys.stderr.flush()
    sys.__stdout__.write(MARK + json.dumps({"data": bundle}) + "\n")
    sys.__stdout__.flush()


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
    pkg.__path__ = []
    sys.modules.setdefault("IPython", pkg)
    sys.modules["IPython.display"] = mod


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
        _ipython_display_shim()
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


def _matplotlib_backend():
    """A backend module whose show() publishes the figures: MPLBACKEND=module://mlc_mpl."""
    mod = types.ModuleType("mlc_mpl")

    def __getattr__(name):
        import matplotlib.backends.backend_agg as agg
        return getattr(agg, name)

    mod.__getattr__ = __getattr__
    mod.show = lambda *a, **k: flush_figures()
    sys.modules["mlc_mpl"] = mod
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


def read_value(entry):
    path = os.path.join(MLC, entry["file"])
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
        return np.load(path, allow_pickle=False)
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
    if np is not None and type(value) is np.ndarray and not value.dtype.hasobject:
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


def write_outputs(names, namespace, host):
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
        path = os.path.join(OUT, "%s.%s" % (name, EXT[fmt]))
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
    with open(os.path.join(OUT, "outputs.json"), "w") as f:
        json.dump(result, f)


# -- the cell -------------------------------------------------------------------------------

def run_cell(source, namespace):
    """Execute like a notebook cell: a final expression's value is displayed."""
    tree = ast.parse(source, CELL)
    last = None
    if tree.body and isinstance(tree.body[-1], ast.Expr):
        last = ast.Expression(tree.body.pop().value)
    exec(compile(tree, CELL, "exec"), namespace)
    if last is not None:
        value = eval(compile(last, CELL, "eval"), namespace)
        if value is not None:
            publish(mime_bundle(value))


def main():
    with open(CELL, encoding="utf-8") as f:
        source = f.read()
    manifest = {}
    if os.path.exists(MLC + "/manifest.json"):
        with open(MLC + "/manifest.json") as f:
            manifest = json.load(f)
    _install_display()
    _matplotlib_backend()
    namespace = {"__name__": "__main__", "__file__": CELL, "display": display}
    try:
        for name, entry in manifest.get("inputs", {}).items():
            try:
                namespace[name] = read_value(entry)
            except CellError as e:
                raise CellError("--in %s: %s" % (name, e))
        run_cell(source, namespace)
        flush_figures()
    except SystemExit:
        raise
    except CellError as e:
        sys.stderr.write("mlcontainer: %s\n" % e)
        return 2
    except BaseException as e:  # report any failure of user code as a traceback
        tb = e.__traceback__
        # Drop the runner's own frames so the traceback starts in the cell.
        while tb is not None and tb.tb_frame.f_code.co_filename != CELL:
            tb = tb.tb_next
        traceback.print_exception(type(e), e, tb or e.__traceback__)
        sys.stderr.flush()
        return 1
    if manifest.get("outputs"):
        write_outputs(manifest["outputs"], namespace, manifest.get("host", {}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
