"""Pure: a spec in, build artifacts out (scripts, pip.conf, Dockerfile text). No I/O here."""

from __future__ import annotations

import json
import shlex

from ...runner import CONTAINER_ENV, MLC_DIR, RUN_USER, RUNNER_COMMAND, WORK_DIR
from .pipconfig import BuildNetwork

BUILD_DIR = "/tmp/mlc-build"  # holds the CA bundle and index settings; deleted before commit
PIP_CACHE = "/mlc-cache/pip"  # a named volume: the wheel cache shared by every build


def pip_conf(net: BuildNetwork) -> str:
    lines = ["[global]"]
    if net.index_url:
        lines.append(f"index-url = {net.index_url}")
    if net.extra_index_urls:
        lines.append("extra-index-url = " + " ".join(net.extra_index_urls))
    if net.trusted_hosts:
        lines.append("trusted-host = " + " ".join(net.trusted_hosts))
    if net.cert_path:
        lines.append(f"cert = {BUILD_DIR}/ca.pem")
    return "\n".join(lines) + "\n"


def requirements_txt(requirements) -> str:
    return "".join(f"{r}\n" for r in requirements)


def lock_txt(lock) -> str:
    """A pip requirements file with exact pins and hashes, from lock entries."""
    out = []
    for entry in lock:
        line = f"{entry['name']}=={entry['version']}"
        for h in entry.get("hashes", ()):
            line += f" \\\n    --hash={h}"
        out.append(line)
    return "".join(f"{line}\n" for line in out)


def download_script() -> str:
    """Fetch every locked file (checked by hash) into BUILD_DIR/wheels, for `export`."""
    return (
        "\n".join(
            [
                "set -eu",
                f"export PIP_CONFIG_FILE={BUILD_DIR}/pip.conf PIP_CACHE_DIR={PIP_CACHE}",
                "export PIP_NO_INPUT=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_PROGRESS_BAR=off",
                f"python -m pip download --no-deps --require-hashes -r {BUILD_DIR}/lock.txt "
                f"-d {BUILD_DIR}/wheels",
            ]
        )
        + "\n"
    )


def install_script(apt=(), has_requirements=True, from_lock=False) -> str:
    """Shell script run in a throwaway container whose filesystem becomes the environment image.

    Every value it uses comes from files in BUILD_DIR, so no user text is ever part of the shell
    command; the pip settings are exported here, not in the container config, so they are not
    kept by `docker commit`.
    """
    lines = [
        "set -eu",
        f"export PIP_CONFIG_FILE={BUILD_DIR}/pip.conf PIP_CACHE_DIR={PIP_CACHE}",
        "export PIP_NO_INPUT=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore",
        "export PIP_PROGRESS_BAR=off DEBIAN_FRONTEND=noninteractive",
    ]
    if apt:
        lines += [
            "echo '--- apt-get install' $(cat " + BUILD_DIR + "/apt.txt)",
            "apt-get update -qq",
            f"xargs -a {BUILD_DIR}/apt.txt apt-get install -y --no-install-recommends",
            "rm -rf /var/lib/apt/lists/*",
        ]
    if has_requirements:
        if from_lock:
            # Rebuild exactly what was recorded: no resolution, every file checked by hash.
            lines += [
                "echo '--- pip install (from lock)'",
                f"python -m pip install --no-deps --require-hashes -r {BUILD_DIR}/lock.txt "
                f"--report {BUILD_DIR}/report.json",
            ]
        else:
            # The report pip writes is the lock: exact versions and hashes of what it installed.
            lines += [
                "echo '--- pip install' $(cat " + BUILD_DIR + "/requirements.txt)",
                f"python -m pip install -r {BUILD_DIR}/requirements.txt "
                f"--report {BUILD_DIR}/report.json",
            ]
    lines.append(
        f"python -c 'import platform; print(platform.python_version())' > {BUILD_DIR}/python.txt"
    )
    return "\n".join(lines) + "\n"


def build_files(
    net: BuildNetwork, *, requirements=(), apt=(), lock=None, ca_bundle=b""
) -> dict[str, bytes]:
    """Files to place in BUILD_DIR for install_script()."""
    files = {
        "install.sh": install_script(apt, bool(requirements or lock), lock is not None),
        "pip.conf": pip_conf(net if ca_bundle else _without_cert(net)),
        "requirements.txt": requirements_txt(requirements),
        "apt.txt": "\n".join(apt) + "\n",
    }
    if lock is not None:
        files["lock.txt"] = lock_txt(lock)
    out = {k: v.encode() for k, v in files.items()}
    if ca_bundle:
        out["ca.pem"] = ca_bundle
    return out


def _without_cert(net: BuildNetwork) -> BuildNetwork:
    return BuildNetwork(net.index_url, net.extra_index_urls, net.trusted_hosts, None, net.dropped)


def dockerfile(base_image: str, apt=(), has_lock=True, wheels=False, data=False) -> str:
    """A plain Dockerfile that rebuilds the environment and runs the cell: used by `export`.

    With ``wheels``, every locked file ships beside it, so the build needs no index: it works
    offline, behind any proxy, and after a package is yanked.
    """
    out = [f"FROM {base_image}"]
    if apt:
        out.append(
            "RUN apt-get update \\\n && DEBIAN_FRONTEND=noninteractive apt-get install -y "
            "--no-install-recommends "
            + " ".join(shlex.quote(a) for a in apt)
            + " \\\n && rm -rf /var/lib/apt/lists/*"
        )
    if has_lock and wheels:
        out += [
            "COPY requirements.lock /tmp/requirements.lock",
            "COPY wheels/ /tmp/wheels/",
            "RUN python -m pip install --no-cache-dir --no-index --find-links /tmp/wheels "
            "--no-deps --require-hashes -r /tmp/requirements.lock \\\n"
            " && rm -rf /tmp/requirements.lock /tmp/wheels",
        ]
    elif has_lock:
        out += [
            "COPY requirements.lock /tmp/requirements.lock",
            "RUN python -m pip install --no-cache-dir --no-deps --require-hashes "
            "-r /tmp/requirements.lock && rm /tmp/requirements.lock",
        ]
    out.append(f"COPY --chown={RUN_USER} mlc/ {MLC_DIR}/")
    if data:  # the mounted inputs that travel with the export, where the cell found them
        out.append(f"COPY --chown={RUN_USER} data/ /")
    out += [
        f"USER {RUN_USER}",
        f"WORKDIR {WORK_DIR}",
        "ENV " + " ".join(f"{k}={v}" for k, v in CONTAINER_ENV.items()),
        "CMD " + json.dumps(list(RUNNER_COMMAND)),
    ]
    return "\n".join(out) + "\n"
