"""Where a pod and a Job are, read from their status as the API server sends it (pure: dicts
in, words out). The backend's watch loop decides with these; tests feed them plain dicts."""

from __future__ import annotations

import re

from .objects import CONTAINER_NAME

IMAGE_PULL_REASONS = (
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "ErrImageNeverPull",
    "RegistryUnavailable",
)
# A pull that cannot succeed by waiting; others (a registry that times out) the kubelet retries.
NEVER_PULLS = re.compile(
    r"not found|manifest unknown|unauthorized|authentication required|denied|forbidden"
    r"|invalid reference|InvalidImageName|ErrImageNeverPull",
    re.IGNORECASE,
)
PULL_PATIENCE = 30.0  # a pull the kubelet retries (a registry timing out) may fail this long
CONFIG_REASONS = ("CreateContainerConfigError", "CreateContainerError", "RunContainerError")


def container_status(pod: dict, name: str = CONTAINER_NAME) -> dict | None:
    """The status of the cell's container, found by name: the kubelet sorts statuses by name,
    so an injected sidecar (a service mesh, a log shipper) may come first."""
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        if status.get("name") == name:
            return status
    return None


def pod_progress(pod: dict) -> tuple[str, str]:
    """Where a pod is: ("scheduling" | "unschedulable" | "pulling" | "image-pull" |
    "image-retry" | "config-error" | "running" | "terminated", message)."""
    status = pod.get("status") or {}
    state = (container_status(pod) or {}).get("state") or {}
    if "terminated" in state or status.get("phase") in ("Succeeded", "Failed"):
        return "terminated", status.get("message") or ""
    if "running" in state:
        return "running", ""
    waiting = state.get("waiting") or {}
    reason = waiting.get("reason") or ""
    message = waiting.get("message") or reason
    if reason in IMAGE_PULL_REASONS:
        never = NEVER_PULLS.search(f"{reason} {message}")
        return ("image-pull" if never else "image-retry"), message
    if reason in CONFIG_REASONS:
        return "config-error", message
    scheduled = None
    for condition in status.get("conditions") or []:
        if condition.get("type") == "PodScheduled":
            scheduled = condition
    if (
        scheduled is not None
        and scheduled.get("status") == "False"
        and scheduled.get("reason") == "Unschedulable"
    ):
        return "unschedulable", scheduled.get("message") or "no node fits the pod."
    if (pod.get("spec") or {}).get("nodeName") or (
        scheduled is not None and scheduled.get("status") == "True"
    ):
        return "pulling", ""
    return "scheduling", ""


# Restarts after which a container that keeps exiting is a crash loop, even before the kubelet
# says CrashLoopBackOff.
CRASH_RESTARTS = 3


def crash_loop(pod: dict) -> str | None:
    """Why a container of a restarting pod (a Deployment's) keeps ending, in words, once it
    is a crash loop: the kubelet backs off (CrashLoopBackOff) or it restarted CRASH_RESTARTS
    times. None otherwise."""
    status = container_status(pod) or {}
    waiting = (status.get("state") or {}).get("waiting") or {}
    restarts = status.get("restartCount") or 0
    if waiting.get("reason") != "CrashLoopBackOff" and restarts < CRASH_RESTARTS:
        return None
    last = (status.get("lastState") or {}).get("terminated") or {}
    code = last.get("exitCode")
    how = f"exited with code {code}" if code is not None else "ended"
    if last.get("reason") == "OOMKilled":
        how = "ran out of memory (OOMKilled)"
    return f"its container {how} and was restarted {restarts} time(s) (CrashLoopBackOff)"


def container_terminated(pod: dict) -> dict | None:
    return ((container_status(pod) or {}).get("state") or {}).get("terminated")


def disruption(pod: dict | None) -> str | None:
    """Why the cluster took the pod away (an eviction, a preemption, a node going), if it
    did: its DisruptionTarget condition, or the Evicted reason of older kubelets."""
    status = (pod or {}).get("status") or {}
    for condition in status.get("conditions") or []:
        if condition.get("type") == "DisruptionTarget" and condition.get("status") == "True":
            reason = condition.get("reason") or "disrupted"
            return f"{reason}: {condition.get('message') or status.get('message') or ''}".strip()
    if status.get("reason") == "Evicted":
        return f"Evicted: {status.get('message') or ''}".strip()
    return None


def _condition(job: dict | None, *types: str) -> dict | None:
    for condition in ((job or {}).get("status") or {}).get("conditions") or []:
        if condition.get("type") in types and condition.get("status") == "True":
            return condition
    return None


def job_final(job: dict | None) -> dict | None:
    """The Job's Complete or Failed condition, once it has one: every pod has terminated."""
    return _condition(job, "Complete", "Failed")


def job_outcome(job: dict | None) -> dict | None:
    """How the Job ends, as soon as the controller knows: since 1.31 SuccessCriteriaMet and
    FailureTarget come first, Complete and Failed only once its pods have terminated."""
    return _condition(job, "FailureTarget", "Failed") or _condition(
        job, "SuccessCriteriaMet", "Complete"
    )


def job_failure(job: dict | None) -> tuple[str, str] | None:
    """(reason, message) of a failing Job, e.g. ("DeadlineExceeded", ...); None otherwise."""
    condition = job_outcome(job)
    if condition is None or condition.get("type") not in ("FailureTarget", "Failed"):
        return None
    return condition.get("reason") or "Failed", condition.get("message") or ""


def job_suspended(job: dict | None) -> bool:
    """A Job held by a queue (Kueue sets ``suspend``) makes no pod until it is admitted."""
    spec = (job or {}).get("spec") or {}
    return bool(spec.get("suspend")) or _condition(job, "Suspended") is not None


# -- in words: why a pod cannot run (Jobs and Deployments say it alike) --------------------------


def cannot_pull(image: str, message: str, namespace: str) -> str:
    return (
        f"The cluster cannot pull the image {image}: {message}. Check that the cluster's "
        "nodes can reach the registry (KubernetesConfig.registry as the nodes see it) and, "
        "for a private registry, set KubernetesConfig.image_pull_secret to a docker-registry "
        f"Secret of namespace {namespace}."
    )


def failing_pull(image: str, message: str, seconds: float) -> str:
    return (
        f"The cluster has failed to pull the image {image} for {seconds:.0f} s: {message}. "
        "Check that the cluster's nodes can reach the registry (KubernetesConfig.registry as "
        "the nodes see it)."
    )


def cannot_schedule(message: str, limit: float) -> str:
    waited = f" within {limit:g} s" if limit else ""
    return (
        f"The cluster cannot schedule the pod{waited}: {message} Ask for less (--cpus, "
        "--memory, --gpus, or KubernetesConfig.default_cpus/default_memory), or check "
        "KubernetesConfig.node_selector and tolerations."
    )


def cannot_start(message: str) -> str:
    return f"The cluster cannot start the container: {message}."
