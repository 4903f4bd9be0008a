"""The wheel carries the prebuilt sidebar and turns the server extension on by itself.

Builds the wheel from a clean copy of the sources (so the jupyter-builder hook really runs npm),
installs it into a fresh venv with no node on PATH, and asks Jupyter what it sees, as the
extension template's "install without node" job does. Slow: a few minutes.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
LABEXT = "share/jupyter/labextensions/mlcontainer-magics"


def _sources() -> list[str]:
    """The files a fresh clone has: tracked ones and new ones git does not ignore."""
    out = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return sorted({f for f in out.split("\0") if f and (REPO / f).is_file()})


def run(cmd, **kwargs) -> str:
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=900, **kwargs)
    assert out.returncode == 0, f"{cmd} failed:\n{out.stdout[-4000:]}\n{out.stderr[-4000:]}"
    return re.sub(r"\x1b\[[0-9;]*m", "", out.stdout + out.stderr)  # no colours


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    if shutil.which("npm") is None:
        pytest.fail("Building the wheel needs node and npm on PATH (they build the sidebar).")
    src = tmp_path_factory.mktemp("src")
    for rel in _sources():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, src / rel)
    assert not (src / "mlcontainer_magics" / "labextension").exists()  # built, not copied
    dist = tmp_path_factory.mktemp("dist")
    run([sys.executable, "-m", "build", "--wheel", "--outdir", str(dist), str(src)])
    (whl,) = dist.glob("mlcontainer_magics-*.whl")
    return whl


def test_wheel_contents(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    data = next(n.split("/data/")[0] + "/data/" for n in names if "/data/" in n)
    assert f"{data}{LABEXT}/package.json" in names
    assert f"{data}{LABEXT}/install.json" in names
    assert f"{data}{LABEXT}/static/style.js" in names
    assert any(
        re.match(rf"{re.escape(data + LABEXT)}/static/remoteEntry\.\w+\.js$", n) for n in names
    )
    assert f"{data}etc/jupyter/jupyter_server_config.d/mlcontainer_magics.json" in names
    assert "mlcontainer_magics/server/handlers.py" in names
    assert not [n for n in names if "node_modules" in n or n.endswith((".ts", ".tsx"))]


def test_installed_without_node_is_enabled(wheel, tmp_path):
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", str(venv)])
    bindir = venv / "bin"
    # Only the venv on PATH: no node, no npm, nothing of this checkout.
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("JUPYTER", "PYTHON", "VIRTUAL_ENV", "MLCONTAINER"))
    }
    env.update(PATH=str(bindir), HOME=str(tmp_path / "home"))
    assert shutil.which("node", path=env["PATH"]) is None
    run(
        [str(bindir / "python"), "-m", "pip", "install", "--quiet", f"{wheel}[lab]"],
        env=env,
        cwd=tmp_path,
    )

    server = run([str(bindir / "jupyter"), "server", "extension", "list"], env=env, cwd=tmp_path)
    # Enabled by the config file the wheel put in the venv, not by anything here.
    section = server.split(f"Config dir: {venv}/etc/jupyter")[1].split("Config dir:")[0]
    assert re.search(r"mlcontainer_magics\s+enabled", section), server
    assert re.search(r"mlcontainer_magics\s+\S*\s*OK", server), server

    lab = run([str(bindir / "jupyter"), "labextension", "list"], env=env, cwd=tmp_path)
    assert re.search(
        r"mlcontainer-magics v0\.1\.0 enabled\s+OK \(python, mlcontainer.magics\)", lab
    ), lab
    assert "not installed" not in lab.lower() and "error" not in lab.lower(), lab
