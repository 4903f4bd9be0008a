"""The Docker backend: environment images by install-and-commit, runs as fresh containers.

Why install-and-commit instead of `docker build`: the host's CA bundle and index credentials are
handed to pip through a throwaway volume, so they never enter an image layer; and a named volume
holds pip's wheel cache across every build, which the SDK's classic builder cannot do.
"""

from __future__ import annotations

import codecs
import contextlib
import json
import os
import re
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ...core.backend import (
    Backend,
    Environment,
    Events,
    Output,
    RunningRun,
    RunResult,
    WarmSessions,
    no_events,
)
from ...core.events import Phase
from ...core.owner import OWNER
from ...core.owner import alive as owner_alive
from ...core.requirements import (
    closest_locked_parent,
    closest_parent,
    extend_lock,
    lock_from_compiled,
    lock_from_report,
    lock_key,
)
from ...core.runs import run_folder_root
from ...core.spec import EnvSpec, RunSpec, digest
from ...errors import BaseImageMissing, BuildError, EngineUnavailable, RunError
from ...runner import (
    CONTAINER_ENV,
    MLC_DIR,
    RUN_USER,
    RUNNER_COMMAND,
    SECRETS_DIR,
    WORK_DIR,
    runner_source,
)
from . import build as render
from .archive import tar_bytes, untar_files
from .engine import address, connect, engine_errors, is_local, short, translated
from .pipconfig import BuildNetwork, host_build_network, host_uv
from .standby import GO as STANDBY_GO
from .standby import PREFIX as STANDBY_PREFIX
from .standby import (
    EndMarks,
    Standby,
    StandbyPool,
    close_fd,
    go,
    make_folder,
    open_go,
    remove_folder,
    standby_key,
)

LABEL = "org.mlcontainer"
# Each environment built on another adds a layer; overlay2 mounts at most 128. Past this many an
# environment is built from its base again.
MAX_ENV_LAYERS = 64
# One look-up-then-commit at a time in this process: concurrent builds of one lock share one image.
_COMMIT = threading.Lock()
_NO_UV_SAID: set[str] = set()  # bases whose builds fall back to pip, said once per process


def run_name(namespace: str, run_id: str) -> str:
    """The name a standby container takes when a run claims it: its labels, fixed when it was
    made, cannot say which run it is, so `stop`, `is_running` and `running` read its name."""
    return f"{namespace}-run-{run_id}"


def make_labels(namespace: str, **extra) -> dict[str, str]:
    labels = {f"{LABEL}.managed": "1", f"{LABEL}.namespace": namespace}
    labels.update({f"{LABEL}.{k}": str(v) for k, v in extra.items()})
    return labels


class DockerBackend(Backend):
    name = "docker"
    supports_mounts = True

    def __init__(
        self,
        client=None,
        namespace: str = "mlcontainer",
        network: BuildNetwork | None = None,
        clean_orphans: bool = False,
        standby=None,
    ) -> None:
        self._client = client
        # Settings (standby, standby_max, standby_idle) where this backend keeps standby
        # containers: a kernel's does; the CLI's and the server's do not.
        self._standby_settings = standby
        self._standby_pool: StandbyPool | None = None
        self._clean_orphans = clean_orphans  # a kernel's backend does, on first connection
        self.namespace = namespace
        self._network = network
        self._runs: dict[str, Any] = {}  # run_id -> container, for stop()
        self._stopped: set[str] = set()
        self._lost: set[str] = set()  # containers left when the engine went away mid-run

    @property
    def client(self):
        if self._client is None:
            self._client = connect()
            if self._clean_orphans:  # runs of kernels that died mid-run, in the background
                threading.Thread(
                    target=_quietly,
                    # not other kernels' standbys: they are alive and in use
                    args=(self._prune_orphans, False),
                    daemon=True,
                    name="mlcontainer-orphans",
                ).start()
        return self._client

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
            return self._ensure_environment(env_spec, events=events, rebuild=rebuild, lock=lock)

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
        if lock is None and env_spec.requirements:
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
        self, base_id: str, files: dict, script: str, events: Events, timed: list | None = None
    ):
        """Run ``script`` from BUILD_DIR in a throwaway container of ``base_id``; yield it,
        stopped and successful, with its log (and, into ``timed``, (arrival time, line) pairs
        and the end time). BUILD_DIR is a volume of its own, so the CA bundle and index settings
        in it never enter the container's filesystem or a commit; the host's wheel folders and
        uv are bind mounts, never committed either."""
        import docker.errors
        from docker.types import Mount

        build_id = uuid.uuid4().hex[:12]
        labels = make_labels(self.namespace, role="build", build=build_id, owner=OWNER)
        self._ensure_volume(self.cache_volume)
        secrets = self.client.volumes.create(f"{self.namespace}-build-{build_id}", labels=labels)
        container = None
        log_lines: list[str] = []
        binds = [
            Mount(f"{render.HOST_DIR}/{i}", folder, type="bind", read_only=True)
            for i, folder in enumerate(render.host_folders(self._build_network()))
        ]
        uv = host_uv()
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
            for line in _lines(container.logs(stream=True, follow=True)):
                log_lines.append(line)
                if timed is not None:
                    timed.append((time.monotonic(), line))
                events(Phase.BUILD_LOG, line=line)
            status = container.wait()["StatusCode"]
            if timed is not None:
                timed.append((time.monotonic(), None))
            log = "\n".join(log_lines)
            if status != 0:
                doing = "Resolving the requirements" if script == "resolve.sh" else "Building"
                raise BuildError(_build_failure(log, status, doing), log=log)
            yield container, log
        except docker.errors.APIError as e:
            raise BuildError(
                f"Building the environment failed: {short(e)}", log="\n".join(log_lines)
            ) from None
        finally:
            if container is not None:
                _quietly(container.remove, force=True, v=True)
            _quietly(secrets.remove, force=True)

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
        why = None if host_uv() else "no uv on this machine (pip install uv)"
        if why is None and build.base_id not in _NO_UV_SAID:
            t0 = time.monotonic()
            files = self._build_files(requirements=build.env_spec.requirements)
            with self._build_container(build.base_id, files, "resolve.sh", events) as (c, log):
                got = untar_files(c.get_archive(render.BUILD_DIR)[0])
            build.log.append(log)
            if "no-uv" not in got:
                build.lock, build.sources = lock_from_compiled(got["lock.txt"].decode())
                build.uv = True
                build.steps["resolve"] = round(time.monotonic() - t0, 3)
                return
            said = got["no-uv"].decode(errors="replace").strip().splitlines() or ["?"]
            why = f"uv cannot run in {build.env_spec.base_image}: {said[0]}"
        if build.base_id not in _NO_UV_SAID:
            _NO_UV_SAID.add(build.base_id)
            events(Phase.BUILD_LOG, line=f"note: {why}; installing with pip (slower)")

    def _locked_parent(self, build: _Build):
        """The tagged environment of this namespace, base and Debian packages that shares the
        most pins with ``build.lock`` (closest_locked_parent), or None."""
        candidates = []
        for image in self._env_images(build.base_id):
            try:
                lock = json.loads(image.labels[f"{LABEL}.lock"])
                apt = json.loads(image.labels[f"{LABEL}.apt"])
            except (KeyError, ValueError):
                continue  # not one of ours as this version writes them
            candidates.append((image, lock, apt))
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

    def _build(self, build: _Build, events: Events, parent=None):
        # With a parent the Debian packages are there already; a build without one does apt-get.
        # uv installs exactly the lock (removing what the parent has beyond it); pip, without a
        # lock, resolves and installs, adding to the parent's packages.
        env_spec = build.env_spec
        if build.lock is not None and not build.uv:
            build.uv = host_uv() is not None and build.base_id not in _NO_UV_SAID
        parent_lock = json.loads(parent.labels.get(f"{LABEL}.lock", "[]")) if parent else []
        remove = sorted({e["name"] for e in parent_lock} - {e["name"] for e in build.lock or ()})
        files = self._build_files(
            requirements=env_spec.requirements,
            apt=() if parent is not None else env_spec.apt,
            lock=build.lock,
            installer="uv" if build.uv else "pip",
            remove=remove if build.uv else (),
        )
        start = parent.id if parent is not None else build.base_id
        timed: list = []
        with self._build_container(start, files, "install.sh", events, timed) as (container, log):
            got = untar_files(container.get_archive(render.BUILD_DIR)[0])
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

    def _commit_once(self, container, lkey: str, tag: str, conf: dict):
        """The image of ``lkey``: an existing one tagged ``tag``, else this container committed.
        Another process may commit the same lock meanwhile: the oldest image wins."""
        same = self._by_lock_key(lkey)
        if same is None:
            image = container.commit(None, None, conf=conf)
            found = self.client.images.list(
                filters={
                    "label": [f"{LABEL}.lock-key={lkey}", f"{LABEL}.namespace={self.namespace}"]
                }
            )
            same = min(found, key=lambda i: (i.attrs.get("Created", ""), i.id)) if found else image
            if same.id != image.id:
                _quietly(self.client.images.remove, image.id, force=True)
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

    # -- housekeeping ---------------------------------------------------------------------------

    def _run_containers(self, run_id: str) -> list:
        """The running container of ``run_id``: by its label, or by its name where the run
        took a standby (whose labels were fixed before the run existed)."""
        return self.client.containers.list(
            filters={"label": f"{LABEL}.run={run_id}"}
        ) or self.client.containers.list(
            filters={
                "name": f"^/?{re.escape(run_name(self.namespace, run_id))}$",
                "label": f"{LABEL}.role=standby",
            }
        )

    @translated("listing runs")
    def is_running(self, run_id: str) -> bool:
        return bool(self._run_containers(run_id))

    @translated("pruning containers")
    def prune_orphans(self) -> list[str]:
        """Remove containers (and build volumes) of this namespace whose kernel process is gone
        (another machine's are left to it), and every standby container no run has claimed,
        whoever made it: they are disposable, and their kernels make new ones."""
        return self._prune_orphans(True)

    def _prune_orphans(self, all_standbys: bool) -> list[str]:
        done = []
        if all_standbys and self._standby_pool is not None:
            self._standby_pool.clear()  # this kernel's own, with their folders
        for c in self.client.containers.list(
            all=True,
            ignore_removed=True,  # one that goes meanwhile is fine
            filters={"label": f"{LABEL}.namespace={self.namespace}"},
        ):
            owner = c.labels.get(f"{LABEL}.owner", "")
            alive = owner_alive(owner)
            unclaimed = c.labels.get(f"{LABEL}.role") == "standby" and not _run_of(c)
            if alive and not (all_standbys and unclaimed):
                continue  # its kernel lives and removes it itself
            _quietly(c.remove, force=True, v=True)
            if alive:  # a live kernel's standby: its folder is that kernel's to remove
                done.append(f"removed standby container {c.name} (owner {owner})")
                continue
            done.append(f"removed container {c.name} ({c.status}, owner {owner or '?'})")
            for folder in _run_folders(c):  # its kernel died before removing them
                shutil.rmtree(folder, ignore_errors=True)
                done.append(f"removed run folder {folder}")
        for v in self.client.volumes.list(
            filters={"label": [f"{LABEL}.namespace={self.namespace}", f"{LABEL}.role=build"]}
        ):
            if not owner_alive(v.attrs.get("Labels", {}).get(f"{LABEL}.owner", "")):
                _quietly(v.remove, force=True)
                done.append(f"removed build volume {v.name}")
        return done

    @translated("pruning images")
    def prune_images(self, keep) -> list[str]:
        done = []
        for image in self.client.images.list(
            filters={"label": f"{LABEL}.namespace={self.namespace}"}
        ):
            if not image.tags or set(image.tags) & set(keep):
                continue
            for tag in image.tags:
                _quietly(self.client.images.remove, tag)
            done.append(f"removed image {', '.join(image.tags)} (no snapshot uses it)")
        return done

    def _ensure_volume(self, name: str) -> None:
        import docker.errors

        try:
            self.client.volumes.get(name)
        except docker.errors.NotFound:
            self.client.volumes.create(name, labels=make_labels(self.namespace, role="cache"))

    # -- runs ---------------------------------------------------------------------------------

    def run(
        self,
        spec: RunSpec,
        env: Environment,
        workdir,
        *,
        run_id: str,
        events: Events = no_events,
        output: Output | None = None,
        secrets: Mapping[str, str] | None = None,
    ) -> RunResult:
        with engine_errors("running the cell"), _secret_files(secrets) as secrets_dir:
            return self._run(
                spec,
                env,
                workdir,
                run_id=run_id,
                events=events,
                output=output,
                secrets=secrets or {},
                secrets_dir=secrets_dir,
            )

    def _remove_lost(self) -> None:
        """Remove the containers of runs during which the engine went away, now it is back."""
        import docker.errors

        for cid in list(self._lost):
            try:
                self.client.api.remove_container(cid, force=True, v=True)
            except docker.errors.NotFound:
                pass
            self._lost.discard(cid)

    def _remove_or_remember(self, container) -> None:
        import docker.errors

        try:
            container.remove(force=True, v=True)
        except docker.errors.NotFound:
            pass
        except Exception:  # the engine is gone: try again on the next call that reaches it
            self._lost.add(container.id)

    def _run(
        self,
        spec: RunSpec,
        env: Environment,
        workdir,
        *,
        run_id: str,
        events: Events,
        output: Output | None,
        secrets: Mapping[str, str],
        secrets_dir: str | None,
    ) -> RunResult:
        import docker.errors

        output = output or (lambda stream, text: None)
        kwargs = self._container_options(spec, run_id, workdir, secrets, secrets_dir)
        stdout: list[str] = []
        stderr: list[str] = []
        # A UTF-8 character may be split across two chunks of the stream.
        decoders = {
            s: codecs.getincrementaldecoder("utf-8")("replace") for s in ("stdout", "stderr")
        }
        timed_out = threading.Event()
        container = stream = None
        # A standby container claimed for this folder (claim_run_folder): already started.
        standby = self._standby_pool.take(workdir) if self._standby_pool is not None else None
        finished = False  # the cell has ended: removing its container can wait
        try:
            events(Phase.STARTING)
            if standby is not None:
                container, stream = self._hand_over(standby, run_id)
            if container is None:  # no standby, or it died meanwhile: a container of its own
                standby = None
                container = self.client.containers.create(
                    env.image_id, list(RUNNER_COMMAND), **kwargs
                )
                self._runs[run_id] = container
                stream = self.client.api.attach(container.id, stream=True, logs=True, demux=True)
                container.start()
            assert stream is not None, "attached before it runs"
            events(Phase.RUNNING, container=container.id[:12], standby=standby is not None)
            timer = None
            if spec.timeout:
                timer = threading.Timer(spec.timeout, self._expire, (container, timed_out))
                timer.daemon = True
                timer.start()
            # A standby's runner says how it ended (standby.EndMarks); other runs' end is the
            # engine's to report.
            marks = EndMarks() if standby is not None else None
            said = None
            try:
                for out, err in stream:
                    for name, data, chunks in (("stdout", out, stdout), ("stderr", err, stderr)):
                        if data:
                            text = decoders[name].decode(data)
                            text = marks.feed(name, text) if marks is not None else text
                            chunks.append(text)
                            output(name, text)
                    said = marks.status if marks is not None else None
                    if said is not None:
                        break
                for name, chunks in (("stdout", stdout), ("stderr", stderr)):
                    chunks.append(decoders[name].decode(b"", final=True))
                    if marks is not None and said is None:
                        chunks.append(marks.rest(name))
                if said is not None and not timed_out.is_set():
                    code, state = said, {}
                    _quietly(stream.close)
                else:
                    code = container.wait()["StatusCode"]
                    container.reload()
                    state = container.attrs["State"]
                finished = True
            finally:
                if timer is not None:
                    timer.cancel()
            reason = self._reason(code, state, timed_out.is_set(), run_id)
            _quietly(self._replenish, spec, env)  # a standby is never the cell's failure
            return RunResult(code, reason, "".join(stdout), "".join(stderr), container.id)
        except docker.errors.APIError as e:
            hint = ""
            if spec.gpus and "capabilities: [[gpu]]" in str(e):
                hint = (
                    " This engine cannot give containers a GPU: install the NVIDIA "
                    "Container Toolkit and restart Docker, or run without --gpus."
                )
            raise RunError(
                f"The engine refused the run: {short(e)}.{hint}", logs="".join(stderr)
            ) from None
        finally:
            self._runs.pop(run_id, None)
            self._stopped.discard(run_id)
            if container is not None and standby is not None and finished:
                self._standby_pool.remove_used(container)  # type: ignore[union-attr]
            elif container is not None:
                self._remove_or_remember(container)

    # -- standby containers (the pool's books are in standby.py) ------------------------------

    @property
    def standbys(self) -> StandbyPool | None:
        """This backend's standby containers; None where it keeps none (not a kernel's)."""
        if self._standby_settings is None:
            return None
        if self._standby_pool is None:
            self._standby_pool = StandbyPool(self, self._standby_settings)
        return self._standby_pool

    def claim_run_folder(self, spec: RunSpec, env: Environment):
        pool = self.standbys
        if pool is None or not pool.enabled:
            return None
        try:
            key = self._standby_key(spec, env)
            found = pool.claim(key) if key is not None else None
        except Exception:  # a standby is never the cell's failure: it makes its own container
            return None
        return found.folder if found is not None else None

    def release_run_folder(self, folder) -> None:
        if self._standby_pool is not None:
            self._standby_pool.release(folder)

    def _standby_key(self, spec: RunSpec, env: Environment) -> str | None:
        """What a standby must have been made with to run ``spec``; None: no standby for it.
        A run with secrets has none (its values are fixed when its container is made)."""
        if spec.secrets or spec.session:
            return None
        folder = Path("/nonexistent/mlc-standby-key")
        opts = self._container_options(spec, "", folder)
        return standby_key(env.image_id, opts, folder, spec.mounts)

    def _replenish(self, spec: RunSpec, env: Environment) -> None:
        """After a run: a standby for its settings, started in the background."""
        pool = self.standbys
        if pool is None:
            return
        if not pool.enabled:
            pool.clear()  # turned off (%config): those still waiting go now
            return
        key = self._standby_key(spec, env)
        if key is not None:
            pool.replenish(key, lambda: self._make_standby(spec, env.image_id, key))

    def _make_standby(self, spec: RunSpec, image_id: str, key: str) -> Standby:
        """A started container for ``spec``'s settings whose runner waits at its FIFO."""
        folder = Path(tempfile.mkdtemp(prefix=STANDBY_PREFIX, dir=run_folder_root()))
        try:
            make_folder(folder, runner_source())
            opts = self._container_options(spec, "", folder)
            opts["labels"] = make_labels(
                self.namespace, role="standby", owner=OWNER, key=key[:16], image=image_id
            )
            container = self.client.containers.create(
                image_id,
                [*RUNNER_COMMAND, "--standby", f"{MLC_DIR}/{STANDBY_GO}"],
                name=f"{self.namespace}-standby-{uuid.uuid4().hex[:8]}",
                **opts,
            )
            try:
                container.start()
                fd = open_go(folder / STANDBY_GO, lambda: self.container_running(container))
            except BaseException:
                _quietly(container.remove, force=True, v=True)
                raise
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        return Standby(key, folder, container, fd)

    def _hand_over(self, standby: Standby, run_id: str):
        """(container, its attached stream) of a claimed standby, told to run the cell; (None,
        None) when it has gone meanwhile (killed, pruned): the run then makes its own."""
        import docker.errors

        container, stream = standby.container, None
        try:
            container.rename(run_name(self.namespace, run_id))
            self._runs[run_id] = container
            # Its runner has printed nothing yet: with logs=True nothing the cell prints is
            # lost between here and the line that sets it going.
            stream = self.client.api.attach(container.id, stream=True, logs=True, demux=True)
            go(standby)
        except BaseException as e:
            self._runs.pop(run_id, None)
            if stream is not None:
                _quietly(stream.close)
            # Its container only: the folder is the run's now, filled, and serves the
            # container the run makes instead.
            close_fd(standby)
            self._remove_or_remember(container)
            if isinstance(e, (docker.errors.APIError, OSError)):
                return None, None
            raise
        return container, stream

    def discard_standby(self, standby: Standby) -> None:
        """Remove a standby that ran no cell: its container and its folder."""
        close_fd(standby)  # its runner reads end-of-file and exits
        if standby.container is not None:
            self._remove_or_remember(standby.container)
        remove_folder(standby)

    def remove_used(self, container) -> None:
        self._remove_or_remember(container)

    # -- warm sessions (the protocol is in sessions.py) --------------------------------------

    @property
    def sessions(self) -> WarmSessions:
        from .sessions import SessionPool

        if getattr(self, "_sessions", None) is None:
            self._sessions = SessionPool(self)
        return self._sessions

    def start_session(self, spec: RunSpec, env: Environment, folder):
        opts = self._container_options(spec, f"session-{spec.session}", folder)
        opts["volumes"] = {
            str(folder): {"bind": MLC_DIR, "mode": "ro"},
            str(folder / "io"): {"bind": f"{MLC_DIR}/io", "mode": "rw"},
        }
        opts["labels"][f"{LABEL}.role"] = "session"
        opts["labels"][f"{LABEL}.session"] = spec.session
        container = self.client.containers.create(
            env.image_id, [*RUNNER_COMMAND, "--serve", f"{MLC_DIR}/io/session.sock"], **opts
        )
        try:
            container.start()
        except Exception:
            _quietly(container.remove, force=True, v=True)
            raise
        return container

    def container_running(self, container) -> bool:
        import docker.errors

        try:
            container.reload()
        except docker.errors.NotFound:
            return False
        return container.status == "running"

    def container_state(self, container, wait: float = 0) -> dict:
        """The container's State; with ``wait``, after it exits (an OOM kill takes a moment)."""
        try:
            if wait:
                container.wait(timeout=wait)
            container.reload()
            return container.attrs["State"]
        except Exception:
            return {}

    def container_logs(self, container) -> str:
        try:
            return container.logs().decode("utf-8", "replace")[-4000:]
        except Exception:
            return ""

    def signal(self, container, sig: str) -> None:
        _quietly(container.kill, signal=sig)

    def remove_container(self, container) -> None:
        _quietly(container.remove, force=True, v=True)

    def _container_options(
        self,
        spec: RunSpec,
        run_id: str,
        workdir,
        secrets: Mapping[str, str] | None = None,
        secrets_dir: str | None = None,
    ) -> dict:
        import docker.types

        env = {**CONTAINER_ENV, **dict(spec.env), **dict(secrets or {})}
        # With mounts the cell is this user, so it reads and writes the files as the user
        # would, and what it writes is the user's; else the image's unprivileged user.
        user = f"{os.getuid()}:{os.getgid()}" if spec.mounts else RUN_USER
        opts = dict(
            user=user,
            environment=env,
            working_dir=WORK_DIR,
            labels=make_labels(
                self.namespace,
                role="run",
                run=run_id,
                snapshot=run_id,
                name=spec.name or "",
                owner=OWNER,
            ),
            network_mode=spec.network,
            cap_drop=["ALL"],
            security_opt=["no-new-privileges"],
            privileged=False,
            init=True,
            pids_limit=4096,
            # The run's own folder and nothing else of the host: code in, values out.
            volumes={
                str(workdir): {"bind": MLC_DIR, "mode": "ro"},
                str(workdir / "out"): {"bind": f"{MLC_DIR}/out", "mode": "rw"},
                # ... and what the user named: --mount, and the secrets' own folder.
                **{m.source: {"bind": m.target, "mode": m.mode} for m in spec.mounts},
                **({secrets_dir: {"bind": SECRETS_DIR, "mode": "ro"}} if secrets_dir else {}),
            },
        )
        if spec.memory:
            opts.update(mem_limit=spec.memory, memswap_limit=spec.memory)
        if spec.cpus:
            opts["nano_cpus"] = int(spec.cpus * 1e9)
        if spec.gpus:
            count = -1 if spec.gpus == "all" else int(spec.gpus)
            opts["device_requests"] = [
                docker.types.DeviceRequest(count=count, capabilities=[["gpu"]])
            ]
        return opts

    def _reason(self, code: int, state: dict, timed_out: bool, run_id: str) -> str:
        if timed_out:
            return "timeout"
        if run_id in self._stopped:
            return "stopped"
        if state.get("OOMKilled"):
            return "oom"
        if code == 0:
            return "done"
        return "killed" if code in (137, 143) else "failed"

    @staticmethod
    def _expire(container, flag: threading.Event) -> None:
        flag.set()
        _quietly(container.kill)

    @translated("stopping the run")
    def stop(self, run_id: str, grace: float = 0) -> bool:
        """Stop the run's container: at once, or after ``grace`` seconds of SIGTERM."""
        container = self._runs.get(run_id)
        if container is None:
            found = self._run_containers(run_id)
            container = found[0] if found else None
        if container is None:
            return False
        self._stopped.add(run_id)
        if grace:
            _quietly(container.stop, timeout=grace)
        else:
            _quietly(container.kill)
        return True

    # -- what the sidebar asks ----------------------------------------------------------------

    def target(self) -> dict[str, str]:
        return {"engine": address()}

    def status(self) -> dict:
        try:
            with engine_errors("answering"):
                info = self.client.version()
        except EngineUnavailable as e:
            self._client = None  # connect again next time: the engine may be back
            return {"up": False, "version": None, "message": str(e)}
        return {
            "up": True,
            "version": info.get("Version"),
            "api_version": info.get("ApiVersion"),
            "os": info.get("Os"),
            "arch": info.get("Arch"),
            "message": None,
        }

    @translated("listing running containers")
    def running(self, *, all_namespaces: bool = False) -> list[RunningRun]:
        labels = [f"{LABEL}.managed=1"]
        if not all_namespaces:
            labels.append(f"{LABEL}.namespace={self.namespace}")
        items = [
            _running_run(c)
            for c in self.client.containers.list(sparse=True, filters={"label": labels})
            if _run_of(c)
        ]
        return sorted(items, key=lambda r: r.started or "", reverse=True)


@dataclass
class _Build:
    """One environment being made: what was asked, and what resolving and building found."""

    env_spec: EnvSpec
    base_id: str
    tag: str
    lock: list | None  # given (a rebuild from a record) or resolved by uv; None: pip resolves
    uv: bool = False
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


def list_standbys(client, namespace: str) -> list[dict]:
    """The standby containers of ``namespace``, every kernel's, for `mlcontainer doctor`: what a
    user who sees `NAMESPACE-standby-...` in `docker ps` wants to know about them."""
    with engine_errors("listing standby containers"):
        found = client.containers.list(
            all=True,
            ignore_removed=True,
            filters={"label": [f"{LABEL}.namespace={namespace}", f"{LABEL}.role=standby"]},
        )
    items = []
    for c in found:
        owner = c.labels.get(f"{LABEL}.owner", "")
        items.append(
            {
                "name": c.name,
                "id": c.id[:12],
                "status": c.status,
                "run": _run_of(c),  # claimed: the run it runs
                "owner": owner,
                "owner_alive": owner_alive(owner),
                "image": c.labels.get(f"{LABEL}.image", ""),
                "created": c.attrs.get("Created"),
            }
        )
    return sorted(items, key=lambda i: i["created"] or "")


def _names(c) -> list[str]:
    return [n.lstrip("/") for n in (c.attrs.get("Names") or [c.attrs.get("Name") or ""])]


def _run_of(c) -> str | None:
    """The run a container runs: its label, or for a claimed standby its name (run_name)."""
    labels = c.attrs.get("Labels") or c.attrs.get("Config", {}).get("Labels") or {}
    if labels.get(f"{LABEL}.run"):
        return labels.get(f"{LABEL}.snapshot") or labels[f"{LABEL}.run"]
    if labels.get(f"{LABEL}.role") != "standby":
        return None
    prefix = f"{labels.get(f'{LABEL}.namespace')}-run-"
    return next((n[len(prefix) :] for n in _names(c) if n.startswith(prefix)), None)


def _running_run(c) -> RunningRun:
    a = c.attrs
    labels = a.get("Labels") or {}
    created = a.get("Created")
    started = (
        datetime.fromtimestamp(created, timezone.utc).isoformat()
        if isinstance(created, (int, float))
        else created
    )
    names = a.get("Names") or []
    return RunningRun(
        id=_run_of(c),
        container=(a.get("Id") or c.id or "")[:12],
        container_name=names[0].lstrip("/") if names else None,
        name=labels.get(f"{LABEL}.name") or None,
        namespace=labels.get(f"{LABEL}.namespace"),
        image=a.get("Image"),
        state=a.get("State"),
        status=a.get("Status"),
        started=started,
    )


@contextlib.contextmanager
def _secret_files(secrets: Mapping[str, str] | None):
    """A folder holding one file per secret, for SECRETS_DIR, removed when the run ends. Its
    parent is private (0700), so only the container (any user: 0711 and 0444) reads them."""
    if not secrets:
        yield None
        return
    parent = tempfile.mkdtemp(prefix="mlc-secrets-")
    try:
        folder = os.path.join(parent, "s")
        os.mkdir(folder, 0o711)
        os.chmod(folder, 0o711)
        for name, value in secrets.items():
            path = os.path.join(folder, name)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o444)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(value)
            os.chmod(path, 0o444)
        yield folder
    finally:
        shutil.rmtree(parent, ignore_errors=True)


def _lines(chunks):
    pending = b""
    for chunk in chunks:
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            yield line.decode("utf-8", "replace").rstrip("\r")
    if pending:
        yield pending.decode("utf-8", "replace")


def _build_failure(log: str, status: int, doing: str = "Building") -> str:
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
    what = f"{doing} the environment" if doing == "Building" else doing
    return f"{what} failed (exit {status}):\n{detail}"


def _run_folders(container) -> list[str]:
    """Host folders this package made for a container (mlc-run-*, mlc-session-*,
    mlc-standby-*), to remove."""
    out = []
    for mount in container.attrs.get("Mounts") or []:
        source = mount.get("Source") or ""
        name = os.path.basename(source.rstrip("/"))
        if (
            mount.get("Destination") == MLC_DIR
            and name.startswith(("mlc-run-", "mlc-session-", STANDBY_PREFIX))
            and os.path.isdir(source)
        ):
            out.append(source)
    return out


def _read_optional(path: str | None) -> bytes:
    if not path:
        return b""
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return b""


def _quietly(fn, *args, **kwargs) -> None:
    try:
        fn(*args, **kwargs)
    except Exception:  # cleanup must never hide the error that got us here
        pass
