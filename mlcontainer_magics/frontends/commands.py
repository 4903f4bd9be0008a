"""The snapshot verbs as commands: one parser and one dispatcher, shared by the `mlcontainer`
CLI and the `%container` line magic (neither imports the other)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..backends import BACKENDS, Backends
from ..backends.export import deploy_snapshot, export, parse_replicas
from ..backends.pipeline_export import export_pipeline
from ..config import KubernetesConfig
from ..core import pipelines, runs, services, snapshots, verbs
from ..core.events import Phase
from ..core.formatting import plural
from ..core.spec import parse_port
from ..errors import NotFound, RunError, SpecError, VerificationFailed


def build_parser(for_magic: bool = False) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="%container" if for_magic else "mlcontainer",
        description="Containerized notebook runs and their snapshots.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("list", help="snapshots, newest first, one per line (id first)")
    p.add_argument("-n", "--limit", type=int, default=50)
    p.add_argument("--offset", type=int, default=0)
    p.add_argument("--name")
    p.add_argument("--notebook")
    p.add_argument("--status")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("show", help="one snapshot in full")
    p.add_argument("ref", metavar="ID")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser(
        "lineage", help="the snapshots whose values led to a snapshot, in the order they ran"
    )
    p.add_argument("ref", metavar="ID")
    p.add_argument("--json", action="store_true", help="nodes and edges")

    p = sub.add_parser("logs", help="a running service's log (by NAME), or what a snapshot printed")
    p.add_argument("ref", metavar="NAME|ID")

    p = sub.add_parser("rerun", help="run a snapshot again from its recorded lock and base")
    p.add_argument("ref", metavar="ID")
    p.add_argument(
        "--verify", action="store_true", help="fail unless the outputs match the recorded digests"
    )
    p.add_argument(
        "--backend", choices=BACKENDS, help="where to run it (default: where the snapshot ran)"
    )
    p.add_argument(
        "--pipeline",
        action="store_true",
        help="re-run every step whose values led to ID, in order, each fed its parents' new values",
    )
    p.add_argument(
        "--item",
        type=int,
        metavar="I",
        help="a map's (--map) item I alone (default: every item), checked against its record",
    )

    p = sub.add_parser("diff", help="what changed between two snapshots")
    p.add_argument("a", metavar="A")
    p.add_argument("b", metavar="B")
    p.add_argument(
        "--pipeline", action="store_true", help="the pipelines that led to A and B, step by step"
    )

    p = sub.add_parser("export", help="a folder that rebuilds the run with plain docker")
    p.add_argument("ref", metavar="ID")
    p.add_argument("dest", metavar="DIR")
    p.add_argument("--tar", action="store_true", help="also write the image (docker save)")
    p.add_argument("--k8s", action="store_true", help="also write a Kubernetes Job manifest")
    p.add_argument(
        "--pipeline",
        action="store_true",
        help="every step that led to ID (its lineage), with run.sh that runs them in order with "
        "plain docker (with --k8s: pipeline.yaml, one Job running them in order)",
    )
    # -- export --serve, deploy (served cells as artifacts and on a cluster) --
    p.add_argument(
        "--serve",
        action="store_true",
        help="the image serves the cell's function on port 8080 (with --k8s: service.yaml, a "
        "Deployment and a Service, instead of the Job)",
    )
    p.add_argument("--name", help="with --serve: the service's name (default: as served, or ID)")
    p.add_argument("--entry", help="with --serve: the function to serve (default: predict)")
    p.add_argument("--replicas", help="with --serve --k8s: pods of the Deployment (default: 1)")

    p = sub.add_parser(
        "deploy",
        help="serve a snapshot's cell on Kubernetes (a Deployment and a Service), or change its "
        "replicas; waits for the rollout",
    )
    p.add_argument("ref", metavar="ID")
    p.add_argument("--replicas", help="pods serving it (default: as served, else 1)")
    p.add_argument("--name", help="the service's name (default: as served, or the snapshot's)")
    p.add_argument("--entry", help="the cell's function to serve (default: as served, predict)")
    # -- end of export --serve, deploy --

    p = sub.add_parser("rm", help="remove snapshots")
    p.add_argument("refs", nargs="+", metavar="ID")
    p.add_argument("--force", action="store_true", help="even if still marked running")

    sub.add_parser("prune", help="remove orphaned containers and unused environment images")

    p = sub.add_parser(
        "serve",
        help="serve a snapshot's cell again as a new snapshot"
        + ("" if for_magic else " (until Ctrl-C)"),
    )
    p.add_argument("ref", metavar="ID|NAME")
    p.add_argument("--name", help="the service's name (default: the one it was served under)")
    p.add_argument("--port", help="the port on 127.0.0.1 to serve at (default: a free one)")
    p.add_argument("--entry", help="the cell's function to call (default: as recorded, predict)")

    sub.add_parser("services", help="the services running now: name, URL, snapshot, requests")

    p = sub.add_parser(
        "stop",
        help="stop a service" + (" or a warm session of this kernel" if for_magic else ""),
    )
    p.add_argument("name", metavar="NAME")

    if not for_magic:
        p = sub.add_parser("doctor", help="check (with --fix: set up) the engine and base image")
        p.add_argument("--fix", action="store_true", help="start or install what is missing")
        p.add_argument("--base", help="base image to check (default: python:X.Y-slim)")
        p.add_argument("--json", action="store_true", help="machine-readable report")
    return parser


def run_verb(args, *, store, backends: Backends, output=None) -> str:
    """Do one verb; returns the text to print. Raises MlcError on failure."""
    if args.command == "list":
        text = verbs.list_snapshots(
            store,
            limit=args.limit,
            offset=args.offset,
            name=args.name,
            notebook=args.notebook,
            status=args.status,
            as_json=args.json,
        )
        return text or ("[]" if args.json else "no snapshots yet: run a %%containerize cell")
    if args.command == "show":
        return verbs.show(store, args.ref, as_json=args.json)
    if args.command == "lineage":
        return verbs.show_lineage(store, args.ref, as_json=args.json)
    if args.command == "logs":
        try:
            return services.logs(args.ref, store=store, backend_of=backends.for_record)
        except NotFound:  # no service of that name: a snapshot's
            return verbs.logs(store, args.ref)
    if args.command == "services":
        return verbs.format_services(services.rows(store)) or "no services running"
    if args.command == "serve":
        record = store.get(args.ref)
        service = services.serve_snapshot(
            store,
            record["id"],
            backends.for_record(record),
            name=args.name,
            port=parse_port(args.port),
            entry=args.entry,
            output=output,
            secrets_file=backends.settings.secrets_file,
        )
        return served_line(service, rerun_of=record["id"])
    if args.command == "rm":
        return verbs.rm(store, args.refs, force=args.force)
    if args.command == "diff":
        if args.pipeline:
            return pipelines.diff_pipelines(store, args.a, args.b)
        return snapshots.diff(store.get(args.a), store.get(args.b))
    if args.command == "export":
        record = store.get(args.ref)
        if args.pipeline:
            options = ("tar", "serve", "name", "entry", "replicas")
            given = [f"--{k}" for k in options if getattr(args, k, None)]
            if given:
                raise SpecError(f"{', '.join(given)}: not with --pipeline; export one step for it.")
            dest = export_pipeline(
                store,
                record["id"],
                args.dest,
                backends.for_record(record),
                k8s=args.k8s,
                k8s_config=KubernetesConfig(parent=backends.settings),
                data_limit=backends.settings.export_data_limit,
            )
            k8s = "; pipeline.yaml runs it on Kubernetes" if args.k8s else ""
            return f"exported the pipeline to {dest}: sh {dest}/run.sh (README.md says more{k8s})"
        dest = export(
            store,
            record["id"],
            args.dest,
            backends.for_record(record),
            tar=args.tar,
            k8s=args.k8s,
            k8s_config=KubernetesConfig(parent=backends.settings),
            data_limit=backends.settings.export_data_limit,
            **export_serve_options(args),
        )
        if args.serve:
            return (
                f"exported to {dest}: docker build -t service {dest} && "
                "docker run --rm -p 127.0.0.1:8080:8080 service (README.md says how to call it)"
            )
        if record.get("map") and (Path(dest) / "run-items.sh").is_file():
            image = f"snapshot-{record['id']}"
            return (
                f"exported the map ({plural(int(record['map'].get('count') or 0), 'item')}) to "
                f"{dest}: docker build "
                f"-t {image} {dest} && sh {dest}/run-items.sh (README.md says how to run one item)"
            )
        return f"exported to {dest}: docker build -t snapshot {dest} && docker run --rm snapshot"
    if args.command == "deploy":
        return deploy(args, store=store, backends=backends, output=output)
    if args.command == "stop":
        return stop(args.name, store=store, backends=backends)
    if args.command == "prune":
        done = snapshots.prune(store, backends.get(), backend_of=backends.for_record)
        return "\n".join(done) or "nothing to prune"
    if args.command == "rerun" and args.pipeline:
        if args.item is not None:
            raise SpecError(
                "--item re-runs one item of a map; --pipeline re-runs every step: use one."
            )
        return rerun_pipeline(args, store=store, backends=backends, output=output)
    if args.command == "rerun":
        record = store.get(args.ref)  # before the rerun takes the same name
        backend = backends.for_record(record, override=args.backend)
        outcome, problems = snapshots.rerun(
            store,
            record["id"],
            backend,
            verify=args.verify,
            output=output,
            secrets_file=backends.settings.secrets_file,
            item=args.item,
        )
        which = f" (item {args.item})" if args.item is not None else ""
        line = (
            f"rerun {record['id']}{which} as {outcome.run_id} on {backend.name}: "
            f"{outcome.result.reason}"
        )
        if args.verify and problems:
            raise VerificationFailed(
                line + "\nNOT reproduced:\n- " + "\n- ".join(problems), problems
            )
        return line + ("\nverified: outputs match the recorded digests" if args.verify else "")
    raise SpecError(f"unknown command {args.command}")


def rerun_pipeline(args, *, store, backends: Backends, output=None) -> str:
    """`rerun ID --pipeline [--verify]`: one line per step; each step's start (and the
    rebuild of an environment whose image is gone) said as it happens."""
    say = (lambda text: output("stdout", text + "\n")) if output else (lambda text: None)

    def events(phase, **info):
        label = f"step {info['step']}/{info['steps']} {info['step_name']} {info['rerun_of']}"
        if phase == Phase.RECORDED:
            say(f"{label} -> {info['snapshot']}: started")
        elif phase == Phase.BUILDING:
            say(f"{label}: building its environment from the lock")

    rerun = pipelines.rerun_pipeline(
        store,
        args.ref,
        lambda record: backends.for_record(record, override=args.backend),
        verify=args.verify,
        events=events,
        output=output,
        secrets_file=backends.settings.secrets_file,
    )
    text = pipelines.format_rerun(rerun)
    if rerun.first_difference is not None:
        where = pipelines.stopped_at(rerun)
        if args.verify:
            raise VerificationFailed(
                f"{text}\nNOT reproduced: {where} differs; the steps after it were not run",
                rerun.problems,
            )
        raise RunError(f"{text}\nthe pipeline stopped at {where}", reason="failed")
    count = len(rerun.steps)
    if args.verify:
        return text + f"\nverified: the outputs of all {count} steps match the recorded digests"
    return text


def served_line(service, rerun_of: str | None = None) -> str:
    """Where a service is and how to call it: the line a served cell (or `serve`) ends with."""
    again = f", serving {rerun_of} again" if rerun_of else ""
    return (
        f"service {service.name!r} at {service.url} (snapshot {service.run_id}{again}); "
        f"call it with mlcontainer_magics.service({service.name!r}) or POST to "
        f"{service.url}/{service.entry}"
    )


def stop(name: str, *, store, backends: Backends) -> str:
    """Stop the service ``name`` (this process's, else one another process serves), or a
    warm session of this kernel."""
    if services.REGISTRY.get(name) is not None:
        service = services.REGISTRY.stop(name)
        return f"stopped service {name} (snapshot {service.run_id})"
    pool = backends.get().sessions
    if pool is not None and pool.stop(name):
        return f"stopped session {name}"
    try:
        record = services.serving_record(store, name)
    except NotFound:
        sessions = ", ".join(pool.names()) if pool is not None else ""
        serving = ", ".join(r["name"] for r in services.rows(store)) or "none"
        raise NotFound(
            f"No session {name!r} runs in this kernel, nor a service of that name; "
            f"sessions: {sessions or 'none'}; services: {serving}."
        ) from None
    # Another process serves it: its watcher sees the container end and records it stopped.
    runs.request_stop(store, backends.for_record(record), record["id"], grace=services.STOP_GRACE)
    return f"stopped service {name} (snapshot {record['id']})"


# -- export --serve, deploy ---------------------------------------------------------------------


def export_serve_options(args) -> dict:
    """export's --serve options; refused without --serve, where they mean nothing."""
    given = [f"--{k}" for k in ("name", "entry", "replicas") if getattr(args, k, None)]
    if not args.serve:
        if given:
            raise SpecError(f"{', '.join(given)}: only with --serve; add --serve.")
        return {}
    replicas = parse_replicas(args.replicas)
    return {"serve": True, "service": args.name, "entry": args.entry, "replicas": replicas}


def deploy(args, *, store, backends: Backends, output=None) -> str:
    """`deploy ID`: the snapshot's cell served on the configured cluster (KubernetesConfig)."""
    record = store.get(args.ref)
    recorded = record.get("backend") == "kubernetes"
    backend = backends.get(
        "kubernetes",
        namespace=record.get("namespace"),
        target=(record.get("target") or None) if recorded else None,
    )
    say = (lambda text: output("stdout", text + "\n")) if output else (lambda text: None)

    def events(phase, **info):
        if info.get("message"):
            say(f"{phase}: {info['message']}")

    deployed = deploy_snapshot(
        store,
        record["id"],
        backend,
        name=args.name,
        entry=args.entry,
        replicas=args.replicas,
        events=events,
        secrets_file=backends.settings.secrets_file,
    )
    ns, name = deployed.namespace, deployed.deployment
    return (
        f"deployed {deployed.name!r} (snapshot {deployed.snapshot}): {deployed.replicas} "
        f"replica(s) ready, deployment/{name} and service/{name} in namespace {ns}.\n"
        f"Through the API server (with your kubeconfig's credentials): {deployed.url}\n"
        f"Or: kubectl port-forward -n {ns} service/{name} 8080:80, then POST to "
        f"http://127.0.0.1:8080/{deployed.entry}"
    )
