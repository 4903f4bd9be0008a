"""Environment images of the Docker backend: resolve the requirements into a lock with uv and
install exactly the lock into a throwaway container (of the base, or of the environment sharing
the most pins), then commit it. The lock is resolved in that same container where it can be
(from the base; on the environment guessed from the requirements, checked once the lock is
known), else in a throwaway container of the base first. The container is removed off the
critical path, once the cell's first run has started.

Why install-and-commit instead of `docker build`: the host's CA bundle and index credentials are
handed to the installer through a throwaway volume, and its wheel folders and uv through
read-only bind mounts, so none of them enters an image layer; and a named volume holds the wheel
cache across every build, which the SDK's classic builder cannot do.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ...core.backend import Environment, Events, no_events
from ...core.events import Phase
from ...core.owner import OWNER
from ...core.requirements import (
    closest_locked_parent,
    closest_parent,
    extend_lock,
    guess_locked_parent,
    lock_from_compiled,
    lock_from_report,
    lock_key,
    locked_parent_score,
)
from ...core.spec import EnvSpec, digest
from ...errors import BaseImageMissing, BuildError
from . import build as render
from .archive import tar_bytes, untar_files
from .engine import (
    LABEL,
    engine_errors,
    in_background,
    is_local,
    make_labels,
    quietly,
    settle_background,
    short,
    stream_lines,
    translated,
)
from .pipconfig import BuildNetwork, host_build_network, host_uv

# Each environment built on another adds a layer; overlay2 mounts at most 128. Past this many an
# environment is built from its base again.
MAX_ENV_LAYERS = 64
# One look-up-then-commit at a time in this process: concurrent builds of one lock share one image.
_COMMIT = threading.Lock()
_NO_UV_SAID: set[str] = set()  # bases whose builds fall back to pip, said once per process


class EnvironmentImages:
    """The environment half of DockerBackend (a mixin: it uses the backend's client, namespace
    and build network)."""

    client: Any
    namespace: str
    _network: BuildNetwork | None
    _remove_lost: Callable[[], None]  # the backend's: containers the engine lost mid-run

    @property
    def repository(self) -> str:
        return f"{self.namespace}-env"

    @property
    def cache_volume(self) -> str:
        return f"{self.namespace}-pip-cache"

    # -- environments -------------------------------------------------------------------------

    @translated("looking up the base image")
    def base_image_id(self, base: str) -> str:
        return self._base_image_id(base)

    def _base_image_id(self, base: str) -> str:
        import docker.errors

        try:
            return self.client.images.get(base).id
        except docker.errors.ImageNotFound:
            pass
        try:
            repo, _, tag = base.rpartition(":") if ":" in base.split("/")[-1] else (base, "", "")
            return self.client.images.pull(repo, tag=tag or "latest").id
        except docker.errors.APIError as e:
            raise BaseImageMissing(
                f"Base image {base!r} is not on this engine and cannot be pulled "
                f"({short(e)}). Run `mlcontainer doctor --fix` to build python:X.Y-slim "
                f"offline from Debian packages, `docker load` it from a file, or pass --base "
                f"with an image that exists (`docker images`)."
            ) from None

    def ensure_environment(
        self,
        env_spec: EnvSpec,
        *,
        events: Events = no_events,
        rebuild: bool = False,
        lock: list | None = None,
    ) -> Environment:
        with engine_errors("preparing the environment"):
            self._remove_lost()
            try:
                return self._ensure_environment(env_spec, events=events, rebuild=rebuild, lock=lock)
            except BaseException:
                # A build that does not end in an environment leaves nothing by the time it
                # raises: what an earlier step of it removes in the background goes now.
                settle_background(timeout=30)
                raise

    def _ensure_environment(
        self, env_spec: EnvSpec, *, events: Events, rebuild: bool, lock: list | None
    ) -> Environment:
        events(Phase.RESOLVING, base=env_spec.base_image)
        base_id = self._base_image_id(env_spec.base_image)
        if not env_spec.requirements and not env_spec.apt and not lock:
            events(Phase.CACHED, image=env_spec.base_image)
            return Environment(
                env_spec.base_image,
                base_id,
                base_id,
                [],
                cached=True,
                size=self.client.images.get(base_id).attrs.get("Size"),
            )
        tag = self._spec_tag(env_spec, base_id, lock)
        if not rebuild:
            found = self._find(tag)
            if found is None and lock:
                found = self._by_lock_key(lock_key(base_id, env_spec.apt, lock))
            if found is not None:
                return self._cached(found, tag, events)
        build = _Build(env_spec, base_id, tag, lock)
        if lock is None and env_spec.requirements and self._from_base_anyway(build, rebuild):
            # Nothing to build on: resolve with uv in the build's own container (one, not two);
            # where uv cannot run there, pip resolves and installs instead.
            build.uv = True
        elif lock is None and env_spec.requirements:
            guess = self._guessed_parent(build) if _uv_worth_trying(base_id) else None
            if guess is not None:
                # Resolve in the build's own container, of the environment the lock will most
                # likely build on (one container, not two); it installs once the lock is
                # checked (lock_check). Else the lock says where to build: on another.
                built = self._build(build, events, guess, resolve_on_guess=True)
                if built is not None:
                    return built
                if build.found is not None:  # other words for the same packages
                    return self._cached(build.found, tag, events)
            else:
                # Lock first (uv, in a throwaway container of the base), then install exactly it.
                self._resolve(build, events)
            if build.lock is not None and not rebuild:
                found = self._by_lock_key(lock_key(base_id, env_spec.apt, build.lock))
                if found is not None:  # other words for the same packages
                    return self._cached(found, tag, events)
        if build.lock is not None and build.uv:
            # Build on the environment sharing the most pins, removing what it has beyond the
            # lock: only the difference is installed and committed. A rebuild starts afresh.
            parent = None if rebuild or lock is not None else self._locked_parent(build)
        else:
            # pip: a spec that only adds packages to an existing environment builds on it.
            parent = None if rebuild or lock is not None else self._parent_for(env_spec, base_id)
        events(
            Phase.BUILDING,
            image=tag,
            apt=list(env_spec.apt),
            requirements=list(env_spec.requirements),
            on=parent.tags[0] if parent is not None else None,
            installer="uv" if build.uv else "pip",
        )
        return self._build(build, events, parent)

    def _cached(self, image, tag: str, events: Events) -> Environment:
        if tag not in image.tags:
            image.tag(*tag.split(":"))
        events(Phase.CACHED, image=tag, size=image.attrs.get("Size"))
        return self._environment(image, tag, cached=True)

    def _spec_tag(self, env_spec: EnvSpec, base_id: str, lock) -> str:
        key = digest(
            {
                "spec": env_spec.key(),
                "base": base_id,
                "lock": [(e["name"], e["version"]) for e in lock] if lock else None,
            }
        )
        return f"{self.repository}:{key[:24]}"

    def _find(self, ref: str):
        import docker.errors

        try:
            return self.client.images.get(ref)
        except docker.errors.ImageNotFound:
            return None

    def _environment(self, image, tag: str, cached: bool, log: str = "") -> Environment:
        labels = image.attrs["Config"].get("Labels") or {}
        return Environment(
            image=tag,
            image_id=image.id,
            base_image_id=labels.get(f"{LABEL}.base-id", ""),
            lock=json.loads(labels.get(f"{LABEL}.lock", "[]")),
            cached=cached,
            size=image.attrs.get("Size"),
            build_log=log,
        )

    @contextlib.contextmanager
    def _build_container(
        self,
        base_id: str,
        files: dict,
        script: str,
        events: Events,
        timed: list | None = None,
        lock_check: Callable | None = None,
    ):
        """Run ``script`` from BUILD_DIR in a throwaway container of ``base_id``; yield it,
        stopped and successful (or, once install.sh says render.BUILT, done and waiting), with
        its log (and, into ``timed``, (arrival time, line) pairs and the end time). BUILD_DIR
        is a volume of its own, so the CA bundle and index settings in it never enter the
        container's filesystem or a commit; the host's wheel folders and uv are bind mounts,
        never committed either. When the script says it waits for its lock to be checked
        (render.LOCK_CHECK), ``lock_check(container)`` gives the files that let it go on (or
        stop), put into BUILD_DIR."""
        import docker.errors
        from docker.types import Mount

        doing = (
            "Resolving the requirements" if script == "resolve.sh" else "Building the environment"
        )
        build_id = uuid.uuid4().hex[:12]
        labels = make_labels(self.namespace, role="build", build=build_id, owner=OWNER)
        self._ensure_volume(self.cache_volume)
        secrets = self.client.volumes.create(f"{self.namespace}-build-{build_id}", labels=labels)
        container = None
        done = False
        log_lines: list[str] = []
        binds = [
            Mount(f"{render.HOST_DIR}/{i}", folder, type="bind", read_only=True)
            for i, folder in enumerate(render.host_folders(self._build_network()))
        ]
        uv = host_uv() if _no_host_uv() is None else None
        if uv:
            binds.append(Mount(render.UV_PATH, uv, type="bind", read_only=True))
        try:
            container = self.client.containers.create(
                base_id,
                ["sh", f"{render.BUILD_DIR}/{script}"],
                labels=labels,
                # Mounts, not `volumes=`: the SDK would also declare those paths as VOLUMEs in
                # the container's config, which `docker commit` keeps in the image, and every
                # run of it would then make two anonymous volumes.
                mounts=[
                    Mount(render.CACHE_DIR, self.cache_volume),
                    Mount(render.BUILD_DIR, secrets.name),
                    *binds,
                ],
            )
            container.put_archive(render.BUILD_DIR, tar_bytes(files, mode=0o600))
            container.start()
            logs = container.logs(stream=True, follow=True)
            built = False
            for line in stream_lines(logs):
                if line == render.BUILT:  # all written: committed as it is, no exit to wait for
                    built = True
                    quietly(logs.close)
                    break
                log_lines.append(line)
                if timed is not None:
                    timed.append((time.monotonic(), line))
                events(Phase.BUILD_LOG, line=line)
                if lock_check is not None and line.startswith(render.LOCK_CHECK):
                    # the files in the order written: the script goes on once BUILD_DIR/go is
                    # there, the rest complete by then
                    container.put_archive(
                        render.BUILD_DIR, tar_bytes(lock_check(container), mode=0o600)
                    )
            status = 0 if built else container.wait()["StatusCode"]
            if timed is not None:
                timed.append((time.monotonic(), None))
            log = "\n".join(log_lines)
            if status != 0:
                raise BuildError(_build_failure(log, status, doing), log=log)
            yield container, log
            done = True
        except docker.errors.APIError as e:
            raise BuildError(f"{doing} failed: {short(e)}", log="\n".join(log_lines)) from None
        finally:
            if done:  # committed (or read): its files take seconds to delete, once the first
                # run has ended, or 5 s on (a long run; no run at all: a process exiting waits
                # for this before it ends)
                in_background(_remove_build, container, secrets, until_a_run_ends=5.0)
            else:
                _remove_build(container, secrets)

    def _build_network(self) -> BuildNetwork:
        net = self._network or host_build_network()
        return net if is_local() else render.with_local_folders_dropped(net)

    def _build_files(self, **kwargs) -> dict:
        net = self._build_network()
        return render.build_files(net, ca_bundle=_read_optional(net.cert_path), **kwargs)

    def _resolve(self, build: _Build, events: Events) -> None:
        """Resolve the requirements into ``build.lock`` with uv in a throwaway container of the
        base. Where uv cannot run there (or the host has none), say so once and leave the lock
        to pip's build."""
        why = _no_host_uv()
        if why is None and build.base_id not in _NO_UV_SAID:
            t0 = time.monotonic()
            files = self._build_files(requirements=build.env_spec.requirements)
            with self._build_container(build.base_id, files, "resolve.sh", events) as (c, log):
                got = untar_files(c.get_archive(render.BUILD_DIR)[0])
            build.log.append(log)
            if "no-uv" not in got:
                build.lock, build.sources = lock_from_compiled(got["lock.txt"].decode())
                build.uv = True
                build.steps["uv resolve"] = round(time.monotonic() - t0, 3)
                return
            why = _why_no_uv(build, got["no-uv"])
        _say_no_uv(build, why or "", events)

    def _from_base_anyway(self, build: _Build, rebuild: bool) -> bool:
        """Whether this build starts from the base whatever its lock (a rebuild, or no
        environment of this base and Debian packages to build on) and uv can be tried."""
        if not _uv_worth_trying(build.base_id):
            return False
        apt = sorted(build.env_spec.apt)
        return rebuild or not any(
            sorted(json.loads(image.labels.get(f"{LABEL}.apt", "[]"))) == apt
            for image in self._env_images(build.base_id)
        )

    def _locked_images(self, base_id: str) -> list[tuple]:
        """(image, lock, apt) of each environment of this namespace on ``base_id``: what a
        new environment may build on."""
        candidates = []
        for image in self._env_images(base_id):
            try:
                lock = json.loads(image.labels[f"{LABEL}.lock"])
                apt = json.loads(image.labels[f"{LABEL}.apt"])
            except (KeyError, ValueError):
                continue  # not one of ours as this version writes them
            candidates.append((image, lock, apt))
        return candidates

    def _locked_parent(self, build: _Build):
        """The tagged environment of this namespace, base and Debian packages that shares the
        most pins with ``build.lock`` (closest_locked_parent), or None."""
        candidates = self._locked_images(build.base_id)
        return closest_locked_parent(candidates, build.lock, build.env_spec.apt)

    def _env_images(self, base_id: str) -> list:
        return [
            image
            for image in self.client.images.list(
                filters={
                    "label": [
                        f"{LABEL}.namespace={self.namespace}",
                        f"{LABEL}.role=env",
                        f"{LABEL}.base-id={base_id}",
                    ]
                }
            )
            if image.tags and len(image.attrs["RootFS"].get("Layers", ())) < MAX_ENV_LAYERS
        ]

    def _parent_for(self, env_spec: EnvSpec, base_id: str):
        """The tagged environment image of this namespace and base that ``env_spec`` adds to."""
        if not env_spec.requirements:
            return None
        candidates = []
        for image in self._env_images(base_id):
            try:
                candidates.append(
                    (
                        image,
                        json.loads(image.labels[f"{LABEL}.requirements"]),
                        json.loads(image.labels[f"{LABEL}.apt"]),
                    )
                )
            except (KeyError, ValueError):
                continue  # not one of ours as this version writes them
        return closest_parent(candidates, env_spec.requirements, env_spec.apt)

    def _build(self, build: _Build, events: Events, parent=None, resolve_on_guess=False):
        """Build ``build`` on ``parent`` (or its base) and commit it. With ``resolve_on_guess``
        (no lock yet; ``parent`` a guess, guessed_parent): resolve in the build's container
        first; where the lock is built already (``build.found``), or fits another environment
        better, or uv cannot run there (``build.uv`` False), nothing is committed: None."""
        # With a parent the Debian packages are there already; a build without one does apt-get.
        # uv installs exactly the lock (removing what the parent has beyond it); pip, without a
        # lock, resolves and installs, adding to the parent's packages.
        env_spec = build.env_spec
        if resolve_on_guess:
            build.uv = True
            events(
                Phase.BUILDING,
                image=build.tag,
                apt=list(env_spec.apt),
                requirements=list(env_spec.requirements),
                on=parent.tags[0],
                installer="uv",
            )
        if build.lock is not None and not build.uv:
            build.uv = _uv_worth_trying(build.base_id)
        parent_lock = json.loads(parent.labels.get(f"{LABEL}.lock", "[]")) if parent else []
        remove = sorted({e["name"] for e in parent_lock} - {e["name"] for e in build.lock or ()})
        files = self._build_files(
            requirements=env_spec.requirements,
            apt=() if parent is not None else env_spec.apt,
            lock=build.lock,
            installer="uv" if build.uv else "pip",
            remove=remove if build.uv and not resolve_on_guess else (),
            wait_for_go=resolve_on_guess,
        )
        start = parent.id if parent is not None else build.base_id
        timed: list = []
        check = (lambda c: self._lock_check(build, parent, c)) if resolve_on_guess else None
        with self._build_container(start, files, "install.sh", events, timed, check) as (
            container,
            log,
        ):
            got = untar_files(container.get_archive(render.BUILD_DIR)[0])
            if resolve_on_guess and ("stop" in got or "no-uv" in got):
                if "no-uv" in got:
                    build.uv = False
                    _say_no_uv(build, _why_no_uv(build, got["no-uv"]), events)
                build.steps.update(render.step_seconds(timed[:-1], timed[-1][0]))
                build.log.append(log)
                return None
            if build.lock is None and build.uv:  # resolved in this container
                if "no-uv" in got:
                    build.uv = False
                    _say_no_uv(build, _why_no_uv(build, got["no-uv"]), events)
                else:
                    build.lock, build.sources = lock_from_compiled(got["lock.txt"].decode())
            if build.lock is not None:
                new_lock = build.lock
            else:
                new_lock = lock_from_report(got.get("report.json", b"{}"))
                if parent is not None:
                    new_lock = extend_lock(parent_lock, new_lock)
            lkey = lock_key(build.base_id, env_spec.apt, new_lock)
            t0 = time.monotonic()
            with _COMMIT:
                image = self._commit_once(
                    container,
                    lkey,
                    build.tag,
                    {
                        "Labels": make_labels(
                            self.namespace,
                            role="env",
                            **{
                                "lock-key": lkey,
                                "base-id": build.base_id,
                                "base": env_spec.base_image,
                                "python": got.get("python.txt", b"").decode().strip(),
                                "apt": json.dumps(list(env_spec.apt)),
                                "requirements": json.dumps(list(env_spec.requirements)),
                                "lock": json.dumps(new_lock, separators=(",", ":")),
                                "parent": parent.id if parent is not None else "",
                            },
                        ),
                        "Cmd": ["python3"],
                    },
                )
        build.steps.update(render.step_seconds(timed[:-1], timed[-1][0]) if timed else {})
        build.steps["commit"] = round(time.monotonic() - t0, 3)
        build.log.append(log)
        events(
            Phase.BUILT,
            image=build.tag,
            size=image.attrs.get("Size"),
            installer="uv" if build.uv else "pip",
            steps=build.steps,
            wheels=build.wheels(log.splitlines()) if build.uv else None,
        )
        return self._environment(image, build.tag, cached=False, log="\n".join(build.log))

    def _lock_check(self, build: _Build, guess, container) -> dict[str, bytes]:
        """The files that let a build resolving on ``guess`` go on (BUILD_DIR/go, with what to
        remove), or stop it: its lock is built already (``build.found``), or another
        environment suits it better."""
        got = untar_files(container.get_archive(f"{render.BUILD_DIR}/lock.txt")[0])
        build.lock, build.sources = lock_from_compiled(got["lock.txt"].decode())
        build.found = self._by_lock_key(lock_key(build.base_id, build.env_spec.apt, build.lock))
        if build.found is not None:
            return {"stop": b""}

        def score(image):
            return locked_parent_score(json.loads(image.labels.get(f"{LABEL}.lock", "[]")), lock)

        lock = build.lock
        best = self._locked_parent(build)
        if best is None or score(guess) is None or score(guess) != score(best):
            return {"stop": b""}  # another suits it better (a tie is as good)
        guess_lock = json.loads(guess.labels.get(f"{LABEL}.lock", "[]"))
        names = {e["name"] for e in build.lock}
        remove = sorted({e["name"] for e in guess_lock} - names)
        return {"remove.txt": "".join(f"{n}\n" for n in remove).encode(), "go": b""}

    def _guessed_parent(self, build: _Build):
        """The environment the requirements' lock will most likely build on, guessed before
        resolving them (guess_locked_parent), or None."""
        candidates = self._locked_images(build.base_id)
        return guess_locked_parent(candidates, build.env_spec.requirements, build.env_spec.apt)

    def _commit_once(self, container, lkey: str, tag: str, conf: dict):
        """The image of ``lkey``: an existing one tagged ``tag``, else this container committed.
        Another process may commit the same lock meanwhile: the oldest image wins."""
        same = self._by_lock_key(lkey)
        if same is None:
            # Not paused: after render.BUILT its script only sleeps and flushes the disks,
            # which changes none of its files.
            image = container.commit(None, None, conf=conf, pause=False)
            found = self.client.images.list(
                filters={
                    "label": [f"{LABEL}.lock-key={lkey}", f"{LABEL}.namespace={self.namespace}"]
                }
            )
            same = min(found, key=lambda i: (i.attrs.get("Created", ""), i.id)) if found else image
            if same.id != image.id:
                quietly(self.client.images.remove, image.id, force=True)
        same.tag(*tag.split(":"))
        return self.client.images.get(tag)

    def _by_lock_key(self, lkey: str):
        found = self.client.images.list(
            filters={"label": [f"{LABEL}.lock-key={lkey}", f"{LABEL}.namespace={self.namespace}"]}
        )
        return found[0] if found else None

    @translated("downloading the locked packages")
    def fetch_wheels(self, base_image: str, lock: list) -> dict[str, bytes]:
        files = self._build_files(lock=lock)
        files["download.sh"] = render.download_script().encode()
        base_id = self._base_image_id(base_image)
        with self._build_container(base_id, files, "download.sh", no_events) as (container, _):
            got = untar_files(container.get_archive(f"{render.BUILD_DIR}/wheels")[0])
        return got

    @translated("saving the image")
    def save_image(self, ref: str, path) -> None:
        with open(path, "wb") as f:
            for chunk in self.client.images.get(ref).save(named=True):
                f.write(chunk)

    def _ensure_volume(self, name: str) -> None:
        import docker.errors

        try:
            self.client.volumes.get(name)
        except docker.errors.NotFound:
            self.client.volumes.create(name, labels=make_labels(self.namespace, role="cache"))


@dataclass
class _Build:
    """One environment being made: what was asked, and what resolving and building found."""

    env_spec: EnvSpec
    base_id: str
    tag: str
    lock: list | None  # given (a rebuild from a record) or resolved by uv; None: pip resolves
    uv: bool = False
    found: Any = None  # an image of the lock resolved, found at its lock check
    sources: dict = field(default_factory=dict)  # package -> the index or folder it came from
    steps: dict = field(default_factory=dict)  # step -> seconds
    log: list = field(default_factory=list)

    def wheels(self, install_log: list[str]) -> dict[str, int]:
        """Where the installed packages came from: the shared wheel cache, fetched, and (of
        either) a folder of the host's (a find-links folder or a file:// index)."""
        counts = render.uv_counts(install_log)
        installed = {
            line.strip()[2:].split("==")[0] for line in install_log if line.strip().startswith("+ ")
        }
        local = sum(
            1
            for name, where in self.sources.items()
            if name in installed and render.from_host_folder(where)
        )
        return {
            "installed": counts["installed"],
            "cached": max(0, counts["installed"] - counts["prepared"]),
            "fetched": counts["prepared"],
            "local": local,
        }


def _remove_build(container, secrets) -> None:
    """A build's container and its volume of secrets (the volume only once the container,
    which uses it, is gone)."""
    if container is not None:
        quietly(container.remove, force=True, v=True)
    quietly(secrets.remove, force=True)


def _no_host_uv() -> str | None:
    """Why builds cannot have this machine's uv, or None when they can (mounted read-only)."""
    if not is_local():
        return "an engine on another machine cannot mount this machine's uv"
    return None if host_uv() else "no uv on this machine (pip install uv)"


def _uv_worth_trying(base_id: str) -> bool:
    """uv can reach the build, and has not failed to run in this base before."""
    return _no_host_uv() is None and base_id not in _NO_UV_SAID


def _why_no_uv(build: _Build, said: bytes) -> str:
    first = said.decode(errors="replace").strip().splitlines() or ["?"]
    return f"uv cannot run in {build.env_spec.base_image}: {first[0]}"


def _say_no_uv(build: _Build, why: str, events: Events) -> None:
    if build.base_id not in _NO_UV_SAID:
        _NO_UV_SAID.add(build.base_id)
        events(Phase.BUILD_LOG, line=f"note: {why}; installing with pip (slower)")


def _build_failure(log: str, status: int, doing: str) -> str:
    """The lines of pip's (or apt's) own message that say what went wrong."""
    lines = log.splitlines()
    # pip indents the failing subprocess's own output (e.g. a setup.py's message): match it too.
    wanted = [
        i
        for i, line in enumerate(lines)
        if line.lstrip().startswith(("ERROR", "E: ", "error:"))
        or "No matching distribution" in line
    ]
    detail = "\n".join(lines[wanted[0] : wanted[0] + 20]) if wanted else "\n".join(lines[-12:])
    return f"{doing} failed (exit {status}):\n{detail}"


def _read_optional(path: str | None) -> bytes:
    if not path:
        return b""
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return b""
