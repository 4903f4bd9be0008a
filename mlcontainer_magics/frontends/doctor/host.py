"""What the doctor's actions share on this host: its log directory, finding programs (also in
sbin directories a non-root PATH lacks), and running them with their output in a log."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Callable

from ...errors import MlcError

Log = Callable[[str], None]


def state_dir(environ=os.environ) -> Path:
    """Where doctor writes logs: $XDG_STATE_HOME/mlcontainer or ~/.local/state/mlcontainer."""
    xdg = environ.get("XDG_STATE_HOME", "")
    # The XDG spec says relative values are invalid and must be ignored.
    if os.path.isabs(xdg):
        base = Path(xdg)
    else:
        base = Path(environ.get("HOME") or Path.home()) / ".local" / "state"
    return base / "mlcontainer"


def is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def find_exe(name: str) -> str | None:
    # /usr/sbin is often missing from a non-root PATH (and from some root shells).
    found = shutil.which(name)
    if found:
        return found
    for d in ("/usr/sbin", "/sbin", "/usr/bin"):
        p = os.path.join(d, name)
        if os.access(p, os.X_OK):
            return p
    return None


def tail(path: Path, n: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def run(argv: list[str], log: Log, what: str, log_file: Path, env: dict | None = None) -> None:
    """Run one command (an argument list, never a shell string), output appended to log_file."""
    log(f"running: {' '.join(argv)}")
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "ab") as out:
        out.write(f"\n$ {' '.join(argv)}\n".encode())
        out.flush()
        rc = subprocess.run(
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env
        ).returncode
    if rc != 0:
        raise MlcError(
            f"{what} failed (`{' '.join(argv)}` exited {rc}); last lines of "
            f"{log_file}:\n{tail(log_file)}"
        )


def apt_install(packages: list[str], log: Log, log_file: Path) -> None:
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    apt = find_exe("apt-get") or "apt-get"
    run([apt, "update"], log, "apt-get update", log_file, env)
    run([apt, "install", "-y", *packages], log, f"installing {' '.join(packages)}", log_file, env)
