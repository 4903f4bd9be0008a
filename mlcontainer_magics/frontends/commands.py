"""The snapshot verbs as commands: one parser and one dispatcher, shared by the `mlcontainer`
CLI and the `%container` line magic (neither imports the other)."""

from __future__ import annotations

import argparse

from ..backends import BACKENDS, Backends
from ..backends.export import export
from ..config import KubernetesConfig
from ..core import snapshots, verbs
from ..errors import NotFound, SpecError, VerificationFailed


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

    p = sub.add_parser("logs", help="what a snapshot's cell printed")
    p.add_argument("ref", metavar="ID")

    p = sub.add_parser("rerun", help="run a snapshot again from its recorded lock and base")
    p.add_argument("ref", metavar="ID")
    p.add_argument(
        "--verify", action="store_true", help="fail unless the outputs match the recorded digests"
    )
    p.add_argument(
        "--backend", choices=BACKENDS, help="where to run it (default: where the snapshot ran)"
    )

    p = sub.add_parser("diff", help="what changed between two snapshots")
    p.add_argument("a", metavar="A")
    p.add_argument("b", metavar="B")

    p = sub.add_parser("export", help="a folder that rebuilds the run with plain docker")
    p.add_argument("ref", metavar="ID")
    p.add_argument("dest", metavar="DIR")
    p.add_argument("--tar", action="store_true", help="also write the image (docker save)")
    p.add_argument("--k8s", action="store_true", help="also write a Kubernetes Job manifest")

    p = sub.add_parser("rm", help="remove snapshots")
    p.add_argument("refs", nargs="+", metavar="ID")
    p.add_argument("--force", action="store_true", help="even if still marked running")

    sub.add_parser("prune", help="remove orphaned containers and unused environment images")

    if for_magic:
        p = sub.add_parser("stop", help="stop a warm session of this kernel")
        p.add_argument("name", metavar="NAME")
    else:
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
    if args.command == "logs":
        return verbs.logs(store, args.ref)
    if args.command == "rm":
        return verbs.rm(store, args.refs, force=args.force)
    if args.command == "diff":
        return snapshots.diff(store.get(args.a), store.get(args.b))
    if args.command == "export":
        record = store.get(args.ref)
        dest = export(
            store,
            record["id"],
            args.dest,
            backends.for_record(record),
            tar=args.tar,
            k8s=args.k8s,
            k8s_config=KubernetesConfig(parent=backends.settings),
            data_limit=backends.settings.export_data_limit,
        )
        return f"exported to {dest}: docker build -t snapshot {dest} && docker run --rm snapshot"
    if args.command == "stop":
        pool = backends.get().sessions
        if pool is not None and pool.stop(args.name):
            return f"stopped session {args.name}"
        running = ", ".join(pool.names()) if pool is not None else ""
        raise NotFound(
            f"No session {args.name!r} runs in this kernel; running: {running or 'none'}."
        )
    if args.command == "prune":
        done = snapshots.prune(store, backends.get(), backend_of=backends.for_record)
        return "\n".join(done) or "nothing to prune"
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
        )
        line = (
            f"rerun {record['id']} as {outcome.run_id} on {backend.name}: {outcome.result.reason}"
        )
        if args.verify and problems:
            raise VerificationFailed(
                line + "\nNOT reproduced:\n- " + "\n- ".join(problems), problems
            )
        return line + ("\nverified: outputs match the recorded digests" if args.verify else "")
    raise SpecError(f"unknown command {args.command}")
