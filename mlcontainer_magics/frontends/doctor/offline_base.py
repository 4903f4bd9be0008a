"""The base image: present locally, else pulled, else (with --fix, for the one Python Debian
bookworm ships) built offline: debootstrap a minbase rootfs, ``docker import`` it, add Python
with the classic builder. Whatever happens, no temp dir or intermediate image of ours stays."""

from __future__ import annotations

import contextlib
import io
import os
import re
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from ...backends.docker.engine import engine_errors, short
from ...errors import BaseImageMissing, EngineError, EngineUnavailable, MlcError
from .host import Log, apt_install, find_exe, is_root, state_dir, tail

DEBIAN_MIRROR = "http://deb.debian.org/debian"
# The Python each Debian suite ships; an offline base is only honest for that X.Y.
DEBIAN_SUITE_PYTHON = {"bookworm": "3.11"}
OFFLINE_SUITE = "bookworm"
OFFLINE_LABEL = "org.mlcontainer.offline-base"
OFFLINE_PACKAGES = (
    "python3",
    "python3-venv",
    "python3-pip",
    "python-is-python3",
    "ca-certificates",
)
# docker import leaves the config empty; give the image the PATH the official one has.
IMAGE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


# ---------------------------------------------------------------------------------------------
# Pure parts


def _normalize_ref(image: str) -> str:
    """``docker.io/library/python:3.11-slim`` -> ``python:3.11-slim`` (Docker Hub's short form)."""
    for prefix in ("docker.io/library/", "index.docker.io/library/", "library/"):
        if image.startswith(prefix):
            return image[len(prefix) :]
    return image


def offline_buildable(image: str, suite: str = OFFLINE_SUITE) -> bool:
    """True if ``image`` names the official slim image for the suite's own Python."""
    xy = DEBIAN_SUITE_PYTHON[suite]
    return _normalize_ref(image) in (f"python:{xy}-slim", f"python:{xy}-slim-{suite}")


def render_offline_dockerfile(from_ref: str, suite: str = OFFLINE_SUITE) -> str:
    """The layer that turns a debootstrapped rootfs into a stand-in for ``python:X.Y-slim``."""
    xy = DEBIAN_SUITE_PYTHON[suite]
    major, minor = xy.split(".")
    # RUN comes first so that a failing step leaves no committed child image behind; the
    # version check fails the build loudly if the suite's Python ever differs from the name.
    return "\n".join(
        [
            f"FROM {from_ref}",
            "RUN set -eux; \\",
            "    export DEBIAN_FRONTEND=noninteractive; \\",
            "    apt-get update; \\",
            f"    apt-get install -y --no-install-recommends {' '.join(OFFLINE_PACKAGES)}; \\",
            "    apt-get clean; \\",
            # PEP 668's marker makes `pip install` refuse; the official image has no such marker.
            "    rm -rf /var/lib/apt/lists/* /usr/lib/python3*/EXTERNALLY-MANAGED; \\",
            "    python3 -c 'import sys; "
            f"assert sys.version_info[:2] == ({major}, {minor}), sys.version'",
            "ENV LANG=C.UTF-8",
            f'LABEL {OFFLINE_LABEL}="debian-{suite}"',
            'CMD ["python3"]',
            "",
        ]
    )


def debootstrap_progress(line: str, seen: set) -> str | None:
    """The lines of debootstrap's output worth showing: the first of each phase, and problems."""
    parts = line.split()
    if len(parts) < 2:
        return None
    if parts[0] in ("W:", "E:"):
        return line.strip()
    if parts[0] == "I:" and parts[1] not in seen:
        seen.add(parts[1])
        return line.strip()
    return None


def mount_points_under(mounts_text: str, path: str) -> list[str]:
    """Mount points at or below ``path`` in /proc/self/mounts text, deepest first."""
    points = []
    for line in mounts_text.splitlines():
        fields = line.split()
        if len(fields) > 1:
            # the kernel writes space, tab, newline and backslash as octal escapes (\040)
            points.append(re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[1]))
    path = path.rstrip("/") or "/"
    return sorted((p for p in points if p == path or p.startswith(path + "/")), reverse=True)


def _missing_message(image: str, why: str) -> str:
    head = f"base image {image} missing (not present locally; pull failed: {why})"
    if offline_buildable(image):
        return (
            f"{head}: run `mlcontainer doctor --fix` to build it offline from Debian "
            f"{OFFLINE_SUITE} packages, or `docker load -i FILE.tar` a copy saved with "
            f"`docker save {image}` where a registry is reachable."
        )
    xy = DEBIAN_SUITE_PYTHON[OFFLINE_SUITE]
    return (
        f"{head}. Without a registry it cannot be made here: `docker load -i FILE.tar` a copy "
        f"saved with `docker save {image}` where a registry is reachable, or use `--base` "
        f"with an image that exists locally (python:{xy}-slim can be built offline: "
        f"`mlcontainer doctor --fix --base python:{xy}-slim`)."
    )


# ---------------------------------------------------------------------------------------------
# The base image


def _split_ref(image: str) -> tuple[str, str]:
    from docker.utils import parse_repository_tag

    repo, tag = parse_repository_tag(image)
    # Without a tag the SDK would pull every tag of the repository.
    return repo, tag or "latest"


def obtain_base_image(client, image: str, fix: bool, log: Log) -> tuple[str, str]:
    """(image id, "local" | "pulled" | "built") -- see ensure_base_image."""
    import docker.errors

    with engine_errors(f"inspecting base image {image}"):
        try:
            return client.images.get(image).id, "local"
        except docker.errors.ImageNotFound:
            pass
    repo, tag = _split_ref(image)
    log(f"base image {image} not present; trying to pull it")
    try:
        with engine_errors(f"pulling {image}"):
            return client.images.pull(repo, tag=tag).id, "pulled"
    except EngineUnavailable:
        raise
    except EngineError as e:  # the registry is unreachable, or has no such image
        why = str(e).rstrip(".")
    if fix and offline_buildable(image):
        log(f"pull failed ({why}); building {image} offline from Debian {OFFLINE_SUITE}")
        return build_offline_base(client, image, log), "built"
    raise BaseImageMissing(_missing_message(image, why))


def ensure_base_image(client, image: str, fix: bool, log: Log = print) -> str:
    """The id of ``image``: present locally, else pulled, else (with ``fix``, for Debian
    bookworm's python:3.11-slim only) built offline. Raises BaseImageMissing saying what to do."""
    return obtain_base_image(client, image, fix, log)[0]


def offline_origin(client, image_id: str) -> str | None:
    """``debian-SUITE`` if the image is an offline build of ours, else None."""
    try:
        with engine_errors("inspecting the base image"):
            return (client.images.get(image_id).labels or {}).get(OFFLINE_LABEL)
    except MlcError:  # removed meanwhile by someone else: the check itself passed
        return None


# ---------------------------------------------------------------------------------------------
# The offline build


def _mounts_under(path: str) -> list[str]:
    try:
        with open("/proc/self/mounts") as f:
            text = f.read()
    except OSError:
        return []
    return mount_points_under(text, os.path.realpath(path))


def _remove_rootfs_dir(path: str, log: Log) -> None:
    """Remove the debootstrap temp dir; never recurse into /proc, /sys or /dev mounted inside.

    debootstrap mounts those in the target and unmounts them on exit; a killed run may not.
    """
    for mnt in _mounts_under(path):
        subprocess.run(
            ["umount", "-l", mnt],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    left = _mounts_under(path)
    if left:
        log(f"warning: not removing {path}: still mounted: {', '.join(left)}")
        return
    shutil.rmtree(path, ignore_errors=True)


def _slim_rootfs(rootfs: Path) -> None:
    """Drop what debootstrap leaves that an image does not need (downloaded .debs, apt lists)."""
    for pattern in ("var/cache/apt/archives/*.deb", "var/cache/apt/*.bin", "var/lib/apt/lists/*_*"):
        for p in rootfs.glob(pattern):
            p.unlink()


class _TarStream:
    """Iterate a tar of ``root`` made by GNU tar in chunks; ``close()`` reports tar's failure."""

    def __init__(self, root: Path) -> None:
        self.proc = subprocess.Popen(
            ["tar", "--numeric-owner", "-C", str(root), "-c", "."],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )

    def __iter__(self) -> Iterator[bytes]:
        while True:
            chunk = self.proc.stdout.read(1 << 20)
            if not chunk:
                return
            yield chunk

    def close(self, check: bool = True) -> None:
        self.proc.stdout.close()
        if self.proc.poll() is None and not check:
            self.proc.kill()
        err = self.proc.stderr.read().decode(errors="replace")
        self.proc.stderr.close()
        if self.proc.wait() != 0 and check:
            raise MlcError(f"tar of the rootfs failed: {err.strip()[-500:]}")


def _descendants(client, root_id: str) -> list[str]:
    """Ids of images built on ``root_id`` (classic builder step images), leaves first."""
    children: dict = {}
    for i in client.api.images(all=True):
        children.setdefault(i.get("ParentId") or "", []).append(i["Id"])
    order, todo = [], list(children.get(root_id, []))
    while todo:
        i = todo.pop()
        order.append(i)
        todo.extend(children.get(i, []))
    # A parent is always reached before its children, so reversed is leaves first.
    return order[::-1]


def _remove_images(client, ids: Iterable[str], log: Log) -> None:
    import docker.errors

    for i in ids:
        try:
            with (
                engine_errors(f"removing intermediate image {i[:19]}"),
                contextlib.suppress(docker.errors.NotFound),
            ):
                client.images.remove(i, force=True, noprune=False)
        except MlcError as e:  # cleanup goes on, and must not hide why the build failed
            log(f"warning: {e}")


def _prepare(tag: str, suite: str, mirror: str, log: Log) -> Path:
    """Check that an offline build can start, install debootstrap if needed; the log file."""
    if suite not in DEBIAN_SUITE_PYTHON:
        raise BaseImageMissing(f"no offline base recipe for Debian {suite}")
    if not is_root():
        raise BaseImageMissing(
            "building the offline base needs root (debootstrap): run `sudo mlcontainer doctor "
            f"--fix --base {tag}`, or `docker load` a saved image."
        )
    logs = state_dir()
    logs.mkdir(parents=True, exist_ok=True)
    log_file = logs / "offline-base.log"
    with open(log_file, "w") as out:
        out.write(f"offline base {tag} from Debian {suite} ({mirror})\n")
    if find_exe("debootstrap") is None:
        if not find_exe("apt-get"):
            raise BaseImageMissing(
                "debootstrap is not installed and there is no apt-get to "
                "install it: install debootstrap, or `docker load` an image."
            )
        log("installing debootstrap")
        try:
            apt_install(["debootstrap"], log, log_file)
        except MlcError as e:
            raise BaseImageMissing(f"could not install debootstrap: {e}") from None
    return log_file


def _run_debootstrap(rootfs: Path, suite: str, mirror: str, log: Log, log_file: Path) -> None:
    debootstrap = find_exe("debootstrap")
    argv = [debootstrap or "debootstrap", "--variant=minbase", suite, str(rootfs), mirror]
    log(f"running: {' '.join(argv)} (about 30 s)")
    seen: set = set()
    with open(log_file, "a") as out:
        out.write(f"\n$ {' '.join(argv)}\n")
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
        )
        try:
            for line in proc.stdout:
                out.write(line)
                shown = debootstrap_progress(line, seen)
                if shown:
                    log(f"  debootstrap: {shown}")
            rc = proc.wait()
        finally:
            if proc.poll() is None:
                # SIGTERM lets debootstrap's exit trap unmount /proc and /sys in the target.
                proc.terminate()
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
    if rc != 0:
        raise BaseImageMissing(
            f"debootstrap failed (exit {rc}); last lines of {log_file}:\n{tail(log_file)}"
        )


def _import_rootfs(client, rootfs: Path, import_ref: str, suite: str, mirror: str) -> str:
    """Slim the rootfs, give it apt sources, ``docker import`` it as ``import_ref``; its id."""
    _slim_rootfs(rootfs)
    # Updates and security sources, as Debian's own images have (security only where we know
    # where it lives: other mirrors need not carry it).
    sources = f"deb {mirror} {suite} main\ndeb {mirror} {suite}-updates main\n"
    if mirror == DEBIAN_MIRROR:
        sources += f"deb {mirror}-security {suite}-security main\n"
    (rootfs / "etc/apt/sources.list").write_text(sources)
    repo, tag = import_ref.rsplit(":", 1)
    stream = _TarStream(rootfs)
    try:
        with engine_errors("importing the rootfs"):
            client.api.import_image_from_stream(
                iter(stream), repository=repo, tag=tag, changes=[f"ENV PATH={IMAGE_PATH}"]
            )
    except BaseException:
        stream.close(check=False)  # tar's own complaint would hide the import's error
        raise
    stream.close()
    with engine_errors("importing the rootfs"):
        return client.images.get(import_ref).id


def _build(client, dockerfile: str, tag: str, log: Log, log_file: Path) -> str:
    image_id = None
    with open(log_file, "a") as out, engine_errors("building the image"):
        for chunk in client.api.build(
            fileobj=io.BytesIO(dockerfile.encode()),
            tag=tag,
            rm=True,
            forcerm=True,
            pull=False,
            decode=True,
        ):
            text = chunk.get("stream", "")
            out.write(text)
            if text.startswith("Step "):
                log(f"  build: {text.strip()}")
            if "error" in chunk:
                out.write(chunk["error"] + "\n")
                out.flush()
                raise BaseImageMissing(
                    f"building the offline base failed: {chunk['error'].strip()}; last lines "
                    f"of {log_file}:\n{tail(log_file)}"
                )
            if "aux" in chunk and "ID" in chunk["aux"]:
                image_id = chunk["aux"]["ID"]
        return image_id or client.images.get(tag).id


def build_offline_base(
    client, tag: str, log: Log = print, suite: str = OFFLINE_SUITE, mirror: str = DEBIAN_MIRROR
) -> str:
    """Build a stand-in for ``python:X.Y-slim`` from Debian packages alone and tag it ``tag``.

    debootstrap a minbase rootfs, import it, add Python on top with the classic builder, label it
    ``org.mlcontainer.offline-base=debian-SUITE``. The temp dir and the imported intermediate
    tag are removed whatever happens; on failure no image of this build stays. Needs root (for
    debootstrap) and a reachable Debian mirror. Returns the image id.
    """
    t0 = time.monotonic()
    log_file = _prepare(tag, suite, mirror, log)
    tmp = tempfile.mkdtemp(prefix="mlc-rootfs-")
    import_ref = f"mlc-offline-rootfs-{secrets.token_hex(4)}:import"
    ok = False
    try:
        rootfs = Path(tmp) / "rootfs"
        _run_debootstrap(rootfs, suite, mirror, log, log_file)
        log(f"debootstrap done ({time.monotonic() - t0:.0f} s); importing the rootfs")
        imported_id = _import_rootfs(client, rootfs, import_ref, suite, mirror)
        _remove_rootfs_dir(tmp, log)  # free the disk before the build
        log(
            f"imported {imported_id[:19]} ({time.monotonic() - t0:.0f} s); "
            f"installing {' '.join(OFFLINE_PACKAGES)}"
        )
        image_id = _build(client, render_offline_dockerfile(import_ref, suite), tag, log, log_file)
        ok = True
        log(f"built {tag} ({image_id[:19]}) offline in {time.monotonic() - t0:.0f} s")
        return image_id
    except (BaseImageMissing, EngineUnavailable):
        raise
    except MlcError as e:  # the engine refused, or tar failed
        raise BaseImageMissing(f"building the offline base failed: {e}") from None
    except Exception as e:  # OS errors: the temp dir, the rootfs, starting tar
        raise BaseImageMissing(
            f"building the offline base failed: {type(e).__name__}: {short(e)}"
        ) from None
    finally:
        _remove_rootfs_dir(tmp, log)
        _drop_import(client, import_ref, ok, log)


def _drop_import(client, import_ref: str, build_ok: bool, log: Log) -> None:
    """Remove the imported rootfs image (and, after a failed build, the step images on it)."""
    try:
        with engine_errors("looking up the imported rootfs"):
            imported_id = client.images.get(import_ref).id
            doomed = [] if build_ok else _descendants(client, imported_id)
    except MlcError:  # never imported, already gone, or no engine left to ask
        return
    # After a good build this only untags: the imported layer is the root of the new image.
    _remove_images(client, [*doomed, import_ref], log)
