"""The Docker backend: runs as fresh containers (or standby ones, made ahead), warm sessions,
housekeeping. Its environment images are made in environments.py."""

from __future__ import annotations

import codecs
import contextlib
import math
import os
import re
import shutil
import tempfile
import threading
import uuid
from collections.abc import Mapping
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
    item_out_dir,
    no_events,
)
from ...core.events import Phase
from ...core.owner import OWNER
from ...core.owner import alive as owner_alive
from ...core.runs import run_folder_for
from ...core.spec import RunSpec
from ...errors import EngineUnavailable, RunError
from ...runner import (
    CONTAINER_ENV,
    INDEX_ENV,
    MLC_DIR,
    RUN_USER,
    RUNNER_COMMAND,
    SECRETS_DIR,
    WORK_DIR,
    runner_source,
)
from .engine import (
    LABEL,
    address,
    connect,
    engine_errors,
    make_labels,
    quietly,
    run_ended,
    short,
    translated,
)
from .environments import EnvironmentImages
from .pipconfig import BuildNetwork
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

SECRETS_PREFIX = "mlc-secrets-"  # a run's folder of secret files (orphan cleanup knows it)


def run_name(namespace: str, run_id: str) -> str:
    """The name a standby container takes when a run claims it: its labels, fixed when it was
    made, cannot say which run it is, so `stop`, `is_running` and `running` read its name."""
    return f"{namespace}-run-{run_id}"


class DockerBackend(EnvironmentImages, Backend):
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
                    target=quietly,
                    # not other kernels' standbys: they are alive and in use
                    args=(self._prune_orphans, False),
                    daemon=True,
                    name="mlcontainer-orphans",
                ).start()
        return self._client

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
            quietly(c.remove, force=True, v=True)
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
                quietly(v.remove, force=True)
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
                quietly(self.client.images.remove, tag)
            done.append(f"removed image {', '.join(image.tags)} (no snapshot uses it)")
        return done

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
        return self._run_with_secrets(
            "running the cell", spec, env, workdir, run_id, events, output, secrets
        )

    def run_item(
        self,
        spec: RunSpec,
        env: Environment,
        workdir,
        *,
        run_id: str,
        index: int,
        events: Events = no_events,
        output: Output | None = None,
        secrets: Mapping[str, str] | None = None,
    ) -> RunResult:
        return self._run_with_secrets(
            "running an item of the map", spec, env, workdir, run_id, events, output, secrets, index
        )

    def _run_with_secrets(
        self, doing: str, spec, env, workdir, run_id, events, output, secrets, item=None
    ) -> RunResult:
        """_run with the secrets as files of a folder of their own, engine errors said as
        ``doing`` failing."""
        with engine_errors(doing), _secret_files(secrets) as secrets_dir:
            return self._run(
                spec,
                env,
                workdir,
                run_id=run_id,
                events=events,
                output=output,
                secrets=secrets or {},
                secrets_dir=secrets_dir,
                item=item,
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
        item: int | None = None,
    ) -> RunResult:
        import docker.errors

        output = output or (lambda stream, text: None)
        kwargs = self._container_options(spec, run_id, workdir, secrets, secrets_dir, item)
        # The items of a map run at once: each container is the run's under a key of its own.
        key = run_id if item is None else _item_key(run_id, item)
        stdout: list[str] = []
        stderr: list[str] = []
        # A UTF-8 character may be split across two chunks of the stream.
        decoders = {
            s: codecs.getincrementaldecoder("utf-8")("replace") for s in ("stdout", "stderr")
        }
        timed_out = threading.Event()
        container = stream = None
        # A standby container claimed for this folder (claim_run_folder): already started.
        # Never an item's: a standby's /mlc/out is its folder's.
        standby = (
            self._standby_pool.take(workdir)
            if self._standby_pool is not None and item is None
            else None
        )
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
                self._runs[key] = container
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
                    quietly(stream.close)
                else:
                    code = container.wait()["StatusCode"]
                    container.reload()
                    state = container.attrs["State"]
                finished = True
            finally:
                if timer is not None:
                    timer.cancel()
            reason = self._reason(code, state, timed_out.is_set(), key)
            if item is None:
                quietly(self._replenish, spec, env)  # a standby is never the cell's failure
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
            try:
                self._runs.pop(key, None)
                self._stopped.discard(key)
                if container is not None and standby is not None and finished:
                    self._standby_pool.remove_used(container)  # type: ignore[union-attr]
                elif container is not None:
                    self._remove_or_remember(container)
            finally:
                run_ended()  # what a build left to remove goes now

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
        folder = Path(tempfile.mkdtemp(prefix=STANDBY_PREFIX, dir=run_folder_for(spec, {})))
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
                quietly(container.remove, force=True, v=True)
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
                quietly(stream.close)
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

    # -- served cells (services.py) ------------------------------------------------------------

    @property
    def services(self):
        from .services import DockerServices

        if getattr(self, "_services", None) is None:
            self._services = DockerServices(self)
        return self._services

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
            quietly(container.remove, force=True, v=True)
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
        quietly(container.kill, signal=sig)

    @staticmethod
    def secret_files(secrets: Mapping[str, str] | None):
        """A context: a folder of the secrets' files for SECRETS_DIR (None without secrets)."""
        return _secret_files(secrets)

    def remove_container(self, container) -> None:
        quietly(container.remove, force=True, v=True)

    def _container_options(
        self,
        spec: RunSpec,
        run_id: str,
        workdir,
        secrets: Mapping[str, str] | None = None,
        secrets_dir: str | None = None,
        item: int | None = None,
    ) -> dict:
        """The container of a run (or of item ``item`` of a map: its own out folder, its
        MLC_INDEX and label)."""
        import docker.types

        env = {**CONTAINER_ENV, **dict(spec.env), **dict(secrets or {})}
        out = Path(workdir) / "out"
        extra = {}
        if item is not None:
            env[INDEX_ENV] = str(item)
            out, extra = item_out_dir(workdir, item), {"item": item}
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
                **extra,
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
                str(out): {"bind": f"{MLC_DIR}/out", "mode": "rw"},
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
        quietly(container.kill)

    @translated("stopping the run")
    def stop(self, run_id: str, grace: float = 0) -> bool:
        """Stop the run's container (a map's: every item's): at once, or after ``grace``
        seconds of SIGTERM."""
        # Every container of the run: a map's items are several, each under its own key.
        mine = {
            key: c
            for key, c in list(self._runs.items())
            if key == run_id or key.startswith(_item_key(run_id, ""))
        }
        found = {c.id: c for c in mine.values()}
        try:
            found.update({c.id: c for c in self._run_containers(run_id) if c.id not in found})
        except Exception:
            if not found:  # nothing of it known here: the engine's error says why
                raise
            # else: stopped with what this process knows (an engine that stops answering
            # does not keep its own runs from being killed)
        if not found:
            return False
        self._stopped.update(mine or {run_id: None})
        if grace and len(found) > 1:  # a map's items, given their grace together
            ends = [
                threading.Thread(target=self.end_container, args=(c, grace), daemon=True)
                for c in found.values()
            ]
            for t in ends:
                t.start()
            for t in ends:
                t.join()
        else:
            for container in found.values():
                self.end_container(container, grace)
        return True

    @staticmethod
    def end_container(container, grace: float = 0) -> None:
        """SIGTERM, then SIGKILL after ``grace`` seconds; at once without grace. The engine
        takes whole seconds only: a fraction (10.0) makes it refuse the stop altogether."""
        if grace:
            quietly(container.stop, timeout=max(1, math.ceil(grace)))
        else:
            quietly(container.kill)

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
    def running(self, *, all_namespaces: bool = False, services: bool = False) -> list[RunningRun]:
        labels = [f"{LABEL}.managed=1"]
        if not all_namespaces:
            labels.append(f"{LABEL}.namespace={self.namespace}")
        items = [
            _running_run(c)
            for c in self.client.containers.list(sparse=True, filters={"label": labels})
            # services are listed as such (services.running), not as runs
            if _run_of(c)
            and (services or (c.attrs.get("Labels") or {}).get(f"{LABEL}.role") != "service")
        ]
        return sorted(_one_per_map(items), key=lambda r: r.started or "", reverse=True)


def _item_key(run_id: str, item) -> str:
    """What names item ``item`` of the map ``run_id`` among this backend's runs."""
    return f"{run_id}#{item}"


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


def _one_per_map(runs: list[RunningRun]) -> list[RunningRun]:
    """A map's item containers as one entry (its first-started container's), counting them:
    the map is one run, stopped as one."""
    out: list[RunningRun] = []
    maps: dict[str, RunningRun] = {}
    for run in sorted(runs, key=lambda r: r.started or ""):
        if run.items is None or run.id is None:
            out.append(run)
        elif run.id in maps:
            maps[run.id].items = (maps[run.id].items or 0) + 1
        else:
            maps[run.id] = run
            out.append(run)
    return out


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
        items=1 if labels.get(f"{LABEL}.item") else None,
    )


@contextlib.contextmanager
def _secret_files(secrets: Mapping[str, str] | None):
    """A folder holding one file per secret, for SECRETS_DIR, removed when the run ends. Its
    parent is private (0700), so only the container (any user: 0711 and 0444) reads them."""
    if not secrets:
        yield None
        return
    parent = tempfile.mkdtemp(prefix=SECRETS_PREFIX)
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


def _run_folders(container) -> list[str]:
    """Host folders this package made for a container (mlc-run-*, mlc-session-*,
    mlc-standby-*; a service's mlc-secrets-*, which lives as long as it), to remove."""
    out = []
    for mount in container.attrs.get("Mounts") or []:
        source = mount.get("Source") or ""
        name = os.path.basename(source.rstrip("/"))
        parent = os.path.dirname(source.rstrip("/"))
        if (
            mount.get("Destination") == MLC_DIR
            and name.startswith(("mlc-run-", "mlc-session-", STANDBY_PREFIX))
            and os.path.isdir(source)
        ):
            out.append(source)
        elif (
            mount.get("Destination") == SECRETS_DIR
            and os.path.basename(parent).startswith(SECRETS_PREFIX)
            and os.path.isdir(parent)
        ):
            out.append(parent)
    return out
