"""Where a pod and a Job are, read from their status as the API server sends it (pure: dicts
in, words out). The backend's watch loop decides with these; tests feed them plain dicts."""

from __future__ import annotations

IMAGE_PULL_REASONS = (
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "ErrImageNeverPull",
    "RegistryUnavailable",
)
CONFIG_REASONS = ("CreateContainerConfigError", "CreateContainerError", "RunContainerError")


def pod_progress(pod: dict) -> tuple[str, str]:
    """Where a pod is: ("scheduling" | "unschedulable" | "pulling" | "image-pull" |
    "config-error" | "running" | "terminated", message)."""
    status = pod.get("status") or {}
    statuses = status.get("containerStatuses") or []
    state = (statuses[0].get("state") or {}) if statuses else {}
    if "terminated" in state or status.get("phase") in ("Succeeded", "Failed"):
        return "terminated", status.get("message") or ""
    if "running" in state:
        return "running", ""
    waiting = state.get("waiting") or {}
    reason = waiting.get("reason") or ""
    message = waiting.get("message") or reason
    if reason in IMAGE_PULL_REASONS:
        return "image-pull", message
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


def container_terminated(pod: dict) -> dict | None:
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    return ((statuses[0].get("state") or {}).get("terminated")) if statuses else None


def job_final(job: dict | None) -> dict | None:
    """The Job's Complete or Failed condition, once it has one."""
    for condition in ((job or {}).get("status") or {}).get("conditions") or []:
        if condition.get("type") in ("Complete", "Failed") and condition.get("status") == "True":
            return condition
    return None


def job_failure(job: dict | None) -> tuple[str, str] | None:
    """(reason, message) of a failed Job, e.g. ("DeadlineExceeded", ...); None otherwise."""
    condition = job_final(job)
    if condition is None or condition.get("type") != "Failed":
        return None
    return condition.get("reason") or "Failed", condition.get("message") or ""
