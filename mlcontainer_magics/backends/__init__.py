"""Backends: where environments are built and cells run. Each implements
:class:`~mlcontainer_magics.core.backend.Backend`; front ends pick one by name here.
"""

from __future__ import annotations

import contextlib
import threading

from ..config import BACKENDS, MlcontainerSettings
from ..core.backend import Backend
from ..errors import SpecError

__all__ = ["BACKENDS", "Backends", "make_backend"]


def make_backend(
    name: str,
    settings: MlcontainerSettings,
    *,
    namespace: str | None = None,
    target: dict | None = None,
    clean_orphans: bool = False,
    standby: bool = False,
) -> Backend:
    """The backend called ``name``, configured by ``settings`` (a traitlets parent: the
    KubernetesConfig of its config reaches the Kubernetes backend). ``target`` is where a
    recorded run ran (a Kubernetes context and namespace), to run there again. With
    ``standby`` (a kernel's), the Docker backend keeps standby containers as ``settings`` say."""
    namespace = namespace or settings.namespace
    if name == "docker":
        from .docker.backend import DockerBackend

        return DockerBackend(
            namespace=namespace,
            clean_orphans=clean_orphans,
            standby=settings if standby else None,
        )
    if name == "kubernetes":
        from .kubernetes.backend import KubernetesBackend

        return KubernetesBackend(namespace=namespace, parent=settings, target=target)
    raise SpecError(f"Unknown backend {name!r}; use one of {', '.join(BACKENDS)}.")


def warm_up(name: str) -> None:
    """Prepare, ahead of a front end's first cell, what backend ``name``'s first build would
    wait for (safe from any thread; nothing for a backend with nothing to read)."""
    if name == "docker":
        from .docker.pipconfig import warm_up as docker_warm_up

        docker_warm_up()


def _warm_up_quietly(name: str) -> None:
    with contextlib.suppress(Exception):  # only a head start: a build reads what this missed
        warm_up(name)


class Backends:
    """The backends one front end uses, each made on first use and kept (a kernel's sessions
    and a cluster's client live in them): one per name, namespace and target."""

    def __init__(
        self, settings: MlcontainerSettings, *, clean_orphans: bool = False, standby: bool = False
    ) -> None:
        self.settings = settings
        self._clean_orphans = clean_orphans  # a kernel cleans up after kernels that died
        # A kernel keeps standby containers; a CLI process (gone in a moment) or the server not.
        self._standby = standby
        self._made: dict[tuple, Backend] = {}

    def warm_up_in_background(self) -> None:
        """Start warm_up for the configured backend in a daemon thread (a kernel does when the
        extension loads: its first build then skips reading the host's settings)."""
        name = self.settings.backend_name
        threading.Thread(
            target=_warm_up_quietly, args=(name,), daemon=True, name="mlcontainer-warm-up"
        ).start()

    def get(
        self, name: str | None = None, *, namespace: str | None = None, target: dict | None = None
    ) -> Backend:
        name = name or self.settings.backend_name
        namespace = namespace or self.settings.namespace
        key = (name, namespace, tuple(sorted((target or {}).items())))
        if key not in self._made:
            self._made[key] = make_backend(
                name,
                self.settings,
                namespace=namespace,
                target=target,
                clean_orphans=self._clean_orphans,
                standby=self._standby,
            )
        return self._made[key]

    def for_record(self, record: dict, override: str | None = None) -> Backend:
        """The backend a snapshot ran on (Docker for records older than this field), in its
        namespace and, for Kubernetes, its context and namespace; ``override`` picks another."""
        recorded = record.get("backend") or "docker"
        name = override or recorded
        # A cluster's context and namespace; a Docker engine is whichever this machine has.
        target = record.get("target") if name == recorded == "kubernetes" else None
        return self.get(name, namespace=record.get("namespace"), target=target or None)
