"""A map (``--map``) on Kubernetes: one Indexed Job, its objects validated strictly, the fake
API server playing the Job controller for it, and the backend's run_map against the fake."""

from __future__ import annotations

import base64
import json
import threading
import time

import pytest

from mlcontainer_magics.backends.kubernetes import indexed
from mlcontainer_magics.backends.kubernetes.objects import (
    OLDEST_KUBERNETES,
    K8sSettings,
    pod_selector,
)
from mlcontainer_magics.core.spec import EnvSpec, RunSpec
from mlcontainer_magics.errors import SpecError

kubernetes_validate = pytest.importorskip("kubernetes_validate")
kubernetes = pytest.importorskip("kubernetes")
from kubernetes import client  # noqa: E402

pytest_plugins = ["k8s_fake"]

NS = "mlc"
IMAGE = "127.0.0.1:5000/mlc/env@sha256:" + "a" * 64
NEWEST_KUBERNETES = kubernetes_validate.utils.major_minor(kubernetes_validate.latest_version())
K8S_VERSIONS = [OLDEST_KUBERNETES, NEWEST_KUBERNETES]
FILES = {
    "runner.py": b"print('runner')\n",
    "cell.py": b"y = x * 2\n",
    "manifest.json": b'{"map": {"name": "x", "count": 3}}',
    "in/x/00000.json": b"1",
    "in/x/00001.json": b"2",
    "in/x/00002.json": b"3",
}
INDEX_REF = {
    "fieldRef": {"fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"}
}


def make_spec(**kw) -> RunSpec:
    kw.setdefault("code", "y = x * 2\n")
    kw.setdefault("env_spec", EnvSpec("python:3.11-slim"))
    return RunSpec(**kw)


def manifests(spec=None, *, count=3, parallel=2, retries=1, per_index=True, files=FILES, **kw):
    return indexed.map_manifests(
        spec or make_spec(),
        image=IMAGE,
        snapshot_id=kw.pop("snapshot_id", "map-1"),
        namespace=NS,
        settings=kw.pop("settings", K8sSettings(namespace=NS)),
        files=files,
        count=count,
        parallel=parallel,
        retries=retries,
        per_index=per_index,
    )


def validate(obj):
    for version in K8S_VERSIONS:
        kubernetes_validate.validate(obj, version, strict=True)


# -- the objects ------------------------------------------------------------------------------


def test_the_indexed_job_validates_strictly_and_says_completions_parallelism_and_retries():
    spec = make_spec(timeout=30, network="none", env=(("API_TOKEN", "s3"),))
    objs = manifests(spec, count=5, parallel=2, retries=1)
    assert [o["kind"] for o in objs] == ["Secret", "Job", "NetworkPolicy"]
    for obj in objs:
        validate(obj)
    job = objs[1]["spec"]
    assert job["completionMode"] == "Indexed"
    assert (job["completions"], job["parallelism"], job["backoffLimitPerIndex"]) == (5, 2, 1)
    # A failing item must never end the others: no Job-wide limit, no maxFailedIndexes.
    assert "backoffLimit" not in job and "maxFailedIndexes" not in job
    # --timeout bounds each item (its pod), not the whole map.
    assert "activeDeadlineSeconds" not in job
    assert job["template"]["spec"]["activeDeadlineSeconds"] == 30
    (container,) = job["template"]["spec"]["containers"]
    assert {"name": "MLC_INDEX", "valueFrom": INDEX_REF} in container["env"]
    assert "s3" not in json.dumps(objs[1])  # secret values stay in the Secret
    # Every item's file travels in the one Secret, mounted into /mlc like a run's inputs.
    data = objs[0]["data"]
    assert base64.b64decode(data["in__x__00002.json"]) == b"3"
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert {"/mlc/in/x/00000.json", "/mlc/in/x/00002.json", "/mlc/manifest.json"} <= mounts


def test_parallelism_is_at_most_one_pod_per_item_and_all_at_once_by_default():
    assert manifests(count=3, parallel=8)[1]["spec"]["parallelism"] == 3
    assert manifests(count=7, parallel=None)[1]["spec"]["parallelism"] == 7
    assert manifests(count=7, parallel=1)[1]["spec"]["parallelism"] == 1


def test_an_old_cluster_gets_a_backoff_limit_shared_by_all_items():
    job = manifests(count=4, retries=2, per_index=False)[1]
    validate(job)
    assert job["spec"]["backoffLimit"] == 8 and "backoffLimitPerIndex" not in job["spec"]
    note = indexed.shared_backoff_note((1, 28), 4, 2)
    assert "Kubernetes 1.28" in note and "8 retries" in note and "1.29" in note


@pytest.mark.parametrize(
    "info, version, per_index",
    [
        ({"major": "1", "minor": "29"}, (1, 29), True),
        ({"major": "1", "minor": "33+", "gitVersion": "v1.33.1-gke.100"}, (1, 33), True),
        ({"major": "1", "minor": "28"}, (1, 28), False),
        ({"major": "", "minor": "", "gitVersion": "v1.30.2"}, (1, 30), True),
        ({}, None, False),
        (None, None, False),
    ],
)
def test_per_index_backoff_only_where_the_server_is_new_enough(info, version, per_index):
    assert indexed.server_version(info) == version
    assert indexed.per_index_backoff(version) is per_index


def test_items_too_large_for_a_secret_are_a_clear_error_about_the_map():
    files = {**FILES, **{f"in/x/{i:05d}.npy": b"\0" * (300 * 1024) for i in range(4)}}
    with pytest.raises(SpecError) as info:
        manifests(files=files, count=4)
    message = str(info.value)
    assert "1 MiB" in message and "items" in message and "Docker backend" in message


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"count": 0}, "items of 1 or more"),
        ({"parallel": 0}, "--parallel of 1 or more"),
        ({"retries": -1}, "--retries"),
        ({"count": 100_001}, "at most 100000 items"),
    ],
)
def test_bad_counts_are_spec_errors(kw, match):
    with pytest.raises(SpecError, match=match):
        manifests(**kw)


def test_indexes_of_the_status():
    assert indexed.parse_indexes("1,3-5,7") == {1, 3, 4, 5, 7}
    assert indexed.parse_indexes("") == set() and indexed.parse_indexes(None) == set()
    pod = {"metadata": {"annotations": {indexed.COMPLETION_INDEX: "4"}}}
    assert indexed.pod_index(pod) == 4 and indexed.pod_index({"metadata": {}}) is None


# -- the fake's Job controller for Indexed Jobs ------------------------------------------------


@pytest.fixture
def api(k8s_fake):
    api_client = k8s_fake.api_client()
    yield client.CoreV1Api(api_client), client.BatchV1Api(api_client)
    api_client.close()


def submit(api, objs):
    core, batch = api
    core.create_namespaced_secret(NS, objs[0])
    batch.create_namespaced_job(NS, objs[1])
    return objs[1]["metadata"]["name"]


def final_job(k8s_fake, name, timeout=10.0):
    def final():
        job = k8s_fake.get("jobs", name, NS)
        conditions = (job or {}).get("status", {}).get("conditions") or []
        done = [c for c in conditions if c["type"] in ("Complete", "Failed")]
        return job if done else None

    return k8s_fake.wait_for(final, timeout)


def conditions(job):
    return {c["type"]: c.get("reason") for c in job["status"].get("conditions") or []}


def test_the_fake_runs_a_pod_per_index_at_most_parallelism_at_once(api, k8s_fake):
    seen, lock = [], threading.Lock()

    def container(pod):
        with lock:
            seen.append((pod.env["MLC_INDEX"], pod.env["JOB_COMPLETION_INDEX"]))
        pod.log(f"item {pod.env['MLC_INDEX']}")
        time.sleep(0.05)
        return 0

    k8s_fake.script("mlc-", run=container)
    name = submit(api, manifests(count=5, parallel=2))
    job = final_job(k8s_fake, name)
    assert conditions(job)["Complete"] == "CompletionsReached"
    status = job["status"]
    assert status["completedIndexes"] == "0-4" and status["succeeded"] == 5
    assert status["failedIndexes"] == "" and status["failed"] == 0
    assert sorted(seen) == [(str(i), str(i)) for i in range(5)]
    assert k8s_fake.peak_running[(NS, name)] == 2
    pods = k8s_fake.pods_of(name, NS)
    assert sorted(p["metadata"]["annotations"][indexed.COMPLETION_INDEX] for p in pods) == [
        str(i) for i in range(5)
    ]
    assert all(p["metadata"]["name"].startswith(f"{name}-") for p in pods)
    assert {p["spec"]["hostname"] for p in pods} == {f"{name}-{i}" for i in range(5)}


def test_the_fake_retries_a_failed_index_on_its_own_then_marks_it_failed(api, k8s_fake):
    attempts: dict[str, int] = {}
    lock = threading.Lock()

    def container(pod):
        index = pod.env["MLC_INDEX"]
        with lock:
            attempts[index] = attempts.get(index, 0) + 1
        if index == "1":
            return 1  # always
        if index == "3" and attempts[index] == 1:
            return 1  # once
        return 0

    k8s_fake.script("mlc-", run=container)
    name = submit(api, manifests(count=5, parallel=3, retries=1))
    job = final_job(k8s_fake, name)
    assert conditions(job)["Failed"] == "FailedIndexes"
    assert conditions(job)["FailureTarget"] == "FailedIndexes"
    status = job["status"]
    assert status["completedIndexes"] == "0,2-4" and status["failedIndexes"] == "1"
    assert status["failed"] == 3 and status["succeeded"] == 4
    assert attempts == {"0": 1, "1": 2, "2": 1, "3": 2, "4": 1}
    failures = sorted(
        p["metadata"]["annotations"][indexed.INDEX_FAILURES]
        for p in k8s_fake.pods_of(name, NS)
        if p["metadata"]["annotations"][indexed.COMPLETION_INDEX] == "1"
    )
    assert failures == ["0", "1"]


def test_on_an_old_fake_the_shared_backoff_limit_ends_every_item(tmp_path):
    from k8s_fake import FakeKubernetes

    with FakeKubernetes(namespaces=(NS,), k8s_version="1.28") as fake:
        fake.write_kubeconfig(tmp_path / "kubeconfig")
        api_client = fake.api_client()
        try:
            released = threading.Event()

            def container(pod):
                if pod.env["MLC_INDEX"] == "0":
                    return 1
                while not pod.cancelled and not released.is_set():
                    time.sleep(0.01)
                return 0

            fake.script("mlc-", run=container)
            # Per-index retries asked of a 1.28 server: it drops the field.
            objs = manifests(count=3, parallel=3, retries=0, per_index=True)
            name = submit((client.CoreV1Api(api_client), client.BatchV1Api(api_client)), objs)
            job = final_job(fake, name)
            released.set()
            assert "backoffLimitPerIndex" not in job["spec"]
            assert job["spec"]["backoffLimit"] == 6
        finally:
            api_client.close()


def test_the_fake_fails_the_job_past_a_shared_backoff_limit(api, k8s_fake):
    def container(pod):
        if pod.env["MLC_INDEX"] == "0":
            return 1
        while not pod.cancelled:
            time.sleep(0.01)
        return 0

    k8s_fake.script("mlc-", run=container)
    name = submit(api, manifests(count=3, parallel=3, retries=0, per_index=False))
    job = final_job(k8s_fake, name)
    assert conditions(job)["Failed"] == "BackoffLimitExceeded"
    assert "failedIndexes" not in job["status"] and job["status"]["failed"] >= 1
    # The other items were running: the controller deleted their pods.
    k8s_fake.wait_for(lambda: not any(p for p in k8s_fake.pods_of(name, NS) if _live(p)))


def _live(pod):
    return pod["status"].get("phase") not in ("Succeeded", "Failed")


def test_a_pod_past_its_own_deadline_fails_with_deadline_exceeded(api, k8s_fake):
    def container(pod):
        if pod.env["MLC_INDEX"] == "1":
            while True:
                time.sleep(0.01)
        return 0

    k8s_fake.time_scale = 0.01  # 20 s: 0.2 s
    k8s_fake.script("mlc-", run=container)
    name = submit(api, manifests(make_spec(timeout=20), count=2, parallel=2, retries=0))
    job = final_job(k8s_fake, name)
    assert job["status"]["failedIndexes"] == "1" and job["status"]["completedIndexes"] == "0"
    (late,) = [
        p
        for p in k8s_fake.pods_of(name, NS)
        if p["metadata"]["annotations"][indexed.COMPLETION_INDEX] == "1"
    ]
    assert late["status"]["reason"] == "DeadlineExceeded" and late["status"]["phase"] == "Failed"


def test_the_fake_refuses_what_the_api_server_refuses(api):
    _, batch = api
    job = manifests()[1]
    del job["spec"]["completions"]
    with pytest.raises(kubernetes.client.rest.ApiException, match="completions"):
        batch.create_namespaced_job(NS, job)
    job = manifests()[1]
    job["spec"]["completionMode"] = "NonIndexed"
    with pytest.raises(kubernetes.client.rest.ApiException, match="backoffLimitPerIndex"):
        batch.create_namespaced_job(NS, job)


def test_deleting_the_job_takes_every_pod_of_it(api, k8s_fake):
    def container(pod):
        while not pod.cancelled:
            time.sleep(0.01)
        return 143

    k8s_fake.script("mlc-", run=container)
    core, batch = api
    name = submit(api, manifests(count=4, parallel=2))
    k8s_fake.wait_for(lambda: len(k8s_fake.pods_of(name, NS)) == 2)
    batch.delete_namespaced_job(name, NS, propagation_policy="Background")
    k8s_fake.wait_for(lambda: not k8s_fake.pods_of(name, NS))
    assert not core.list_namespaced_pod(NS, label_selector=pod_selector("map-1")).items
