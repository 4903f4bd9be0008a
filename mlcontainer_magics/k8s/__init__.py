"""Kubernetes: pure object builders (:mod:`.objects`) and DNS-safe names (:mod:`.slugs`).

Nothing in this package imports the ``kubernetes`` client; the backend that sends these
objects to a cluster lives in ``mlcontainer_magics.backends.kubernetes``.
"""
from .objects import (
    K8sSettings,
    job_manifest,
    job_name,
    job_yaml,
    network_policy_manifest,
    owner_reference,
    payload_keys,
    pod_selector,
    run_manifests,
    secret_manifest,
    to_yaml,
)
from .slugs import safe_name

__all__ = [
    "K8sSettings",
    "job_manifest",
    "job_name",
    "job_yaml",
    "network_policy_manifest",
    "owner_reference",
    "payload_keys",
    "pod_selector",
    "run_manifests",
    "safe_name",
    "secret_manifest",
    "to_yaml",
]
