"""Values, rich output and pipelines across the container boundary, on the real engine."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from IPython.core.error import UsageError

from conftest import env_images
from mlcontainer_magics.errors import RunError

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("no_leaks")]

DATA = "-r numpy==2.1.3 pandas==2.2.3 pyarrow==18.1.0 --no-capture"


@pytest.fixture
def published(monkeypatch):
    """Display data the magic publishes to the notebook."""
    import IPython.display

    got = []
    monkeypatch.setattr(
        IPython.display, "publish_display_data", lambda data, **kw: got.append(data)
    )
    return got


def test_values_round_trip_exactly(ip):
    arr = np.arange(12, dtype=np.float32).reshape(3, 4) / 7
    df = pd.DataFrame({"n": [1, 2, 3], "x": [0.5, float("nan"), 2.25], "s": ["a", "b", "ç"]})
    d = {"k": [1, 2.5, None, True], "nested": {"s": "ü"}}
    ip.user_ns.update(arr=arr, df=df, d=d, s="héllo\nworld", b=b"\x00\xffbytes")
    ip.run_cell_magic(
        "containerize",
        f"{DATA} --in arr,df,d,s,b --out arr2,df2,d2,s2,b2",
        "arr2, df2, d2, s2, b2 = arr, df, d, s, b",
    )
    ns = ip.user_ns
    assert ns["arr2"].dtype == arr.dtype and np.array_equal(ns["arr2"], arr)
    pd.testing.assert_frame_equal(ns["df2"], df)
    assert ns["d2"] == d and ns["s2"] == "héllo\nworld" and ns["b2"] == b"\x00\xffbytes"


def test_a_large_array_is_mapped_in_and_may_be_changed_in_place(ip):
    """A large input is mapped copy-on-write, not read: the cell sees an ndarray it can change,
    and the file the snapshot keeps (its recorded digest) does not change with it."""
    from mlcontainer_magics.core.transfer import file_digest

    big = np.arange(2**18, dtype=np.float64).reshape(512, 512)  # 2 MiB
    ip.user_ns["big"] = big
    ip.run_cell_magic(
        "containerize",
        f"{DATA} -n mapped --in big --out kind,first,same",
        "import numpy as np\n"
        "kind = [type(big).__name__, isinstance(big, np.ndarray)]\n"
        "big[0, 0] = -1.0\n"
        "first = float(big[0, 0])\n"
        "same = big + 0",
    )
    ns = ip.user_ns
    assert ns["kind"] == ["memmap", True] and ns["first"] == -1.0
    assert ns["same"][0, 0] == -1.0 and np.array_equal(ns["same"][1:], big[1:])
    assert big[0, 0] == 0.0  # the kernel's own array is untouched
    magics = ip.magics_manager.registry["ContainerizeMagics"]
    record = magics.store.get("mapped")
    kept = magics.store.artifacts_dir(record["id"]) / record["inputs"]["big"]["file"]
    assert file_digest(kept) == record["inputs"]["big"]["digest"]


def test_values_cross_through_a_folder_in_ram_unless_the_cell_has_a_memory_limit(ip):
    """Where /dev/shm is a tmpfs with room, the run's folder is there: a large value crosses at
    memory speed. A cell with --memory writes its outputs to disk: in RAM they would count
    against its limit."""
    from mlcontainer_magics.core import runs

    root = runs.run_folder_root()
    if root is None or not runs.in_memory(root):
        pytest.skip("no tmpfs with room for run folders on this machine")
    probe = (
        "fs = [line.split(' - ')[1].split()[0] for line in open('/proc/self/mountinfo')\n"
        "      if line.split()[4] == '/mlc/out'][-1]"
    )
    ip.run_cell_magic("containerize", "--no-capture --out fs", probe)
    assert ip.user_ns["fs"] == "tmpfs"
    ip.run_cell_magic("containerize", "--no-capture --memory 256m --out fs", probe)
    assert ip.user_ns["fs"] != "tmpfs"


def test_values_are_computed_on_in_the_container(ip):
    ip.user_ns["df"] = pd.DataFrame({"g": ["a", "b", "a"], "v": [1, 2, 3]})
    ip.run_cell_magic(
        "containerize",
        f"{DATA} --in df --out totals",
        "totals = df.groupby('g')['v'].sum().reset_index()",
    )
    assert ip.user_ns["totals"].to_dict("list") == {"g": ["a", "b"], "v": [4, 2]}


def test_last_expression_and_display_calls_come_back_as_rich_output(ip, published):
    ip.run_cell_magic(
        "containerize",
        "",
        "from IPython.display import HTML, Markdown, display\n"
        "display(HTML('<b>bold</b>'))\ndisplay(Markdown('# title'))\n"
        "class T:\n    def _repr_html_(self):\n        return '<i>t</i>'\n"
        "display(T())\n6 * 7",
    )
    assert published[0]["text/html"] == "<b>bold</b>"
    assert published[1]["text/markdown"] == "# title"
    assert published[2]["text/html"] == "<i>t</i>"
    assert published[3] == {"text/plain": "42"}


def test_matplotlib_figure_comes_back_as_png(ip, published):
    import base64

    ip.run_cell_magic(
        "containerize",
        "-r matplotlib==3.9.2 --no-capture",
        "import matplotlib.pyplot as plt\nplt.plot([1, 3, 2])\nplt.title('t')\n"
        "plt.show()\nplt.figure(); plt.bar([1, 2], [3, 4])",
    )
    pngs = [p["image/png"] for p in published if "image/png" in p]
    assert len(pngs) == 2  # one from plt.show(), one left open at the end
    assert all(base64.b64decode(p).startswith(b"\x89PNG\r\n") for p in pngs)


def test_two_steps_with_conflicting_numpy_pass_data_through(ip):
    ip.run_cell_magic(
        "containerize",
        "-r 'numpy<2' --no-capture --out a,v1",
        "import numpy as np\na = np.linspace(0, 1, 5)\nv1 = np.__version__",
    )
    ip.run_cell_magic(
        "containerize",
        "-r 'numpy>=2' --no-capture --in a --out total,v2",
        "import numpy as np\ntotal = float(a.sum())\nv2 = np.__version__",
    )
    ns = ip.user_ns
    assert ns["v1"].startswith("1.") and ns["v2"].split(".")[0] == "2"
    assert np.array_equal(ns["a"], np.linspace(0, 1, 5)) and ns["total"] == 2.5


def test_unknown_in_name_fails_before_building(ip, docker_client):
    before = env_images(docker_client)
    with pytest.raises(UsageError, match="--in nope: no such variable"):
        ip.run_cell_magic("containerize", "-r six==1.16.0 --in nope", "pass")
    assert env_images(docker_client) == before


def test_value_that_cannot_be_sent(ip):
    ip.user_ns["f"] = lambda x: x
    with pytest.raises(UsageError, match="cannot be sent"):
        ip.run_cell_magic("containerize", "--in f", "pass")


def test_output_never_assigned(ip):
    with pytest.raises(RunError, match="never assigned y"):
        ip.run_cell_magic("containerize", "--out y", "x = 1")
    assert "y" not in ip.user_ns or ip.user_ns.get("y") is not None
