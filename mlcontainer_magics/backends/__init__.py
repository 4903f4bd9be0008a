"""Backends: where environments are built and cells run."""
from __future__ import annotations

from ..errors import SpecError

BACKENDS = ("docker", "kubernetes")


def make_backend(name: str, *, namespace: str, parent=None):
    """The backend called ``name``; ``parent`` (a traitlets Configurable) passes config on."""
    if name == "docker":
        from .docker.backend import DockerBackend

        # A kernel's backend cleans up after kernels that died mid-run (their orphans).
        return DockerBackend(namespace=namespace, clean_orphans=True)
    if name == "kubernetes":
        from .kubernetes.backend import KubernetesBackend

        return KubernetesBackend(namespace=namespace, parent=parent)
    raise SpecError(f"Unknown backend {name!r}; use one of {', '.join(BACKENDS)}.")
