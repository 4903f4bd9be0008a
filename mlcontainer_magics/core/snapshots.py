"""What can be done with a recorded snapshot: rerun (and verify), diff, prune. (Export, which
makes Docker and Kubernetes artifacts, is ``backends.export``.)"""

from __future__ import annotations

import difflib
import json
import os

from ..errors import MlcError, SpecError, StoreError
from . import mounts, runs, transfer
from . import secrets as secret_values
from .datatree import DigestCache
from .owner import alive as owner_alive
from .spec import EnvSpec, MapSpec, MountSpec, RunSpec, ServeSpec
from .store import ACTIVE_STATUSES


def spec_from_record(record: dict, environ=os.environ) -> RunSpec:
    """The RunSpec a snapshot was made from. Secret values were never recorded: they are taken
    from the current environment, or the rerun stops with a clear error."""
    if not isinstance(record.get("spec"), dict) or "env_spec" not in record["spec"]:
        raise StoreError(
            f"Snapshot {record.get('id')} has no recorded spec, so it cannot be "
            "rerun or exported (it was not made by %%containerize)."
        )
    d = dict(record["spec"])
    env_spec = EnvSpec(
        d["env_spec"]["base_image"],
        tuple(d["env_spec"]["apt"]),
        tuple(d["env_spec"]["requirements"]),
    )
    env = []
    for key, value in d.get("env", []):
        if value == "***":
            if key not in environ:
                raise SpecError(
                    f"Snapshot {record['id']} used the secret {key}, whose value is "
                    f"not recorded; set {key} in the environment and rerun."
                )
            value = environ[key]
        env.append((key, value))
    fields = {k: d.get(k) for k in ("name", "cpus", "memory", "gpus", "timeout", "session")}
    serve, mapped = d.get("serve"), d.get("map")
    return RunSpec(
        code=d["code"],
        env_spec=env_spec,
        env=tuple(env),
        network=d.get("network", "bridge"),
        inputs=tuple(d.get("inputs", ())),
        outputs=tuple(d.get("outputs", ())),
        captured=tuple(d.get("captured", ())),
        secret_env=frozenset(d.get("secret_env", ())),
        mounts=tuple(
            MountSpec(m["source"], m["target"], bool(m.get("writable")))
            for m in d.get("mounts", ())
        ),
        secrets=tuple(d.get("secrets", ())),
        serve=ServeSpec(**serve) if isinstance(serve, dict) else None,
        map=MapSpec(**mapped) if isinstance(mapped, dict) else None,
        **fields,
    )


def recorded_inputs(store, record: dict) -> dict:
    """The values a snapshot's cell received, read back from its kept files."""
    folder = store.artifacts_dir(record["id"])
    values = {}
    for name, entry in (record.get("inputs") or {}).items():
        path = folder / entry["file"]
        if not path.exists():
            raise StoreError(
                f"Input {name} of snapshot {record['id']} is missing from {folder}; "
                "it cannot be rerun."
            )
        values[name] = transfer.read_value(path, entry["format"])
    return values


def rerun(
    store,
    ref: str,
    backend,
    *,
    verify: bool = False,
    events=runs.no_events,
    output=None,
    context=None,
    secrets_file: str | None = None,
    item: int | None = None,
):
    """Run a snapshot again from its recorded lock and base (its secrets taken from this
    environment or ``secrets_file``). Returns (outcome, problems); with ``verify``, a changed
    input file is a problem named before anything runs. A map's every item runs again, or
    ``item`` (its index) alone, and each is checked against its own record."""
    record = store.get(ref)
    spec = spec_from_record(record)
    if item is not None and spec.map is None:
        raise SpecError(
            f"--item {item}: snapshot {record['id']} is not a map (--map); rerun it without --item."
        )
    values = secret_values.resolve(spec.secrets, os.environ, secrets_file)
    problems = []
    if verify and spec.mounts:
        kept = mounts.kept_manifests(store.artifacts_dir(record["id"]))
        cache = DigestCache(store.root)
        try:
            problems += mounts.input_changes(record, kept, cache)
        finally:
            cache.close()
    base_id = backend.base_image_id(spec.env_spec.base_image)
    if record.get("base_image_id") and base_id != record["base_image_id"]:
        problems.append(
            f"base image {spec.env_spec.base_image} is now {base_id[:19]}, "
            f"recorded {record['base_image_id'][:19]}"
        )
    ctx = dict(context or {}, rerun_of=record["id"])
    # Digested as recorded (sha256 in older snapshots), so that --verify compares like with like.
    algorithms = {
        name: algo
        for name, rec in (record.get("outputs") or {}).items()
        if (algo := transfer.digest_algorithm(rec.get("digest"))) in transfer.ALGORITHMS
    }
    options = dict(
        inputs=recorded_inputs(store, record),
        events=events,
        output=output,
        store=store,
        context=ctx,
        lock=record.get("lock") or None,
        secrets=values,
    )
    if spec.map is not None:
        from . import maps

        outcome = maps.execute_map(
            spec,
            backend,
            only=None if item is None else [item],
            output_digests=maps.item_algorithms(record),
            **options,
        )
    else:
        outcome = runs.execute(spec, backend, output_digests=algorithms, **options)
    store.update(outcome.run_id, rerun_of=record["id"])
    if verify:
        new = store.get(outcome.run_id)
        if spec.map is not None:
            problems += maps.verify_items(record, new)
        else:
            problems += verify_against(record, new)
    return outcome, problems


def verify_against(old: dict, new: dict) -> list[str]:
    """Differences that make a rerun not reproduce the recorded one."""
    problems = []
    if new.get("status") != "done":
        problems.append(f"the rerun ended {new.get('status')} (recorded {old.get('status')})")
    if old.get("stdout_digest") and old.get("stdout_digest") != new.get("stdout_digest"):
        problems.append(
            "stdout differs:\n"
            + _unified(old.get("stdout", ""), new.get("stdout", ""), "recorded", "rerun")
        )
    for name, rec in (old.get("outputs") or {}).items():
        now = (new.get("outputs") or {}).get(name, {})
        if rec.get("digest") == now.get("digest"):
            continue
        was, got = transfer.digest_algorithm(rec.get("digest")), now.get("digest")
        if got and rec.get("digest") and was not in transfer.ALGORITHMS:
            problems.append(
                f"output {name} cannot be compared: recorded as {rec.get('digest')}, an "
                "algorithm this version does not know; upgrade mlcontainer-magics"
            )
        else:
            problems.append(f"output {name} differs: recorded {rec.get('digest')}, now {got}")
    problems += mounts.written_changes(old.get("written") or {}, new.get("written") or {})
    return problems


# -- diff -------------------------------------------------------------------------------------


def diff(a: dict, b: dict) -> str:
    """What changed from snapshot a to snapshot b, section by section (pure)."""
    out = [
        f"--- {a['id']} {a.get('name') or ''}".rstrip(),
        f"+++ {b['id']} {b.get('name') or ''}".rstrip(),
    ]
    if a.get("code") != b.get("code"):
        out += ["code:", _unified(a.get("code", ""), b.get("code", ""), a["id"], b["id"])]
    pa = {e["name"]: e["version"] for e in a.get("lock") or []}
    pb = {e["name"]: e["version"] for e in b.get("lock") or []}
    changes = [f"  + {n}=={pb[n]}" for n in sorted(pb.keys() - pa.keys())]
    changes += [f"  - {n}=={pa[n]}" for n in sorted(pa.keys() - pb.keys())]
    changes += [
        f"  ~ {n} {pa[n]} -> {pb[n]}" for n in sorted(pa.keys() & pb.keys()) if pa[n] != pb[n]
    ]
    if changes:
        out += ["packages:"] + changes
    for field in ("base_image", "base_image_id", "apt", "resources", "env"):
        if a.get(field) != b.get(field):
            out.append(f"{field}: {json.dumps(a.get(field))} -> {json.dumps(b.get(field))}")
    oa, ob = a.get("outputs") or {}, b.get("outputs") or {}
    for name in sorted(oa.keys() | ob.keys()):
        da, db = oa.get(name, {}).get("digest"), ob.get(name, {}).get("digest")
        if da != db:
            kinds = {transfer.digest_algorithm(da), transfer.digest_algorithm(db)} - {None}
            note = " (digests of two algorithms: the values may be equal)" if len(kinds) > 1 else ""
            out.append(f"output {name}: {da} -> {db}{note}")
    out += mounts.diff_lines(a, b)
    if a.get("stdout") != b.get("stdout"):
        out += ["stdout:", _unified(a.get("stdout", ""), b.get("stdout", ""), a["id"], b["id"])]
    if len(out) == 2:
        out.append("no differences in code, packages, base, resources, data or outputs")
    return "\n".join(out)


def _unified(a: str, b: str, name_a: str, name_b: str) -> str:
    lines = difflib.unified_diff(a.splitlines(), b.splitlines(), name_a, name_b, lineterm="", n=2)
    return "\n".join("  " + line for line in lines)


# -- prune ------------------------------------------------------------------------------------


def prune(store, backend, backend_of=None) -> list[str]:
    """Remove what no live run needs: orphaned containers, unreferenced environment images,
    and mark snapshots whose kernel died mid-run. ``backend_of(record)`` is the backend a
    snapshot ran on (default: ``backend``): asked whether it still runs, and to stop a
    service whose kernel died (its kernel would have stopped it at exit)."""
    done = backend.prune_orphans()
    referenced = {s.get("env_image") for s in store.list(limit=None)} - {None}
    done += backend.prune_images(keep=referenced)
    for summary in store.list(limit=None, status=list(ACTIVE_STATUSES)):
        record = store.get(summary["id"])
        # Still building, or running in a warm session (whose container has no run label):
        # its kernel is alive and will record how it ends.
        if owner_alive(record.get("kernel")):
            continue
        runs_on = backend_of(record) if backend_of else backend
        if summary.get("status") == "serving":
            # A service ends with its kernel: stopped where it runs (a cluster's too), and
            # recorded as its kernel would have.
            name = (record.get("service") or {}).get("name")
            try:
                if runs_on.stop(summary["id"]):
                    done.append(f"stopped service {name} ({summary['id']}) on {runs_on.name}")
            except MlcError as e:
                done.append(f"left service {summary['id']} serving: {e}")
                continue
            status = "stopped"
        elif runs_on.is_running(summary["id"]):
            continue
        else:
            status = "interrupted"
        store.update(summary["id"], status=status, reason="its kernel went away")
        done.append(f"marked {summary['id']} {status} (its kernel went away)")
    return done
