"""`mlcontainer`: the snapshot verbs (shared with the `%container` magic) and `doctor`."""
from __future__ import annotations

import argparse
import sys

from ..errors import MlcError, VerificationFailed


def build_parser(for_magic: bool = False) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="%container" if for_magic else "mlcontainer",
        description="Containerized notebook runs and their snapshots.")
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
    p.add_argument("--verify", action="store_true",
                   help="fail unless the outputs match the recorded digests")

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


def run_verb(args, *, store, backend, output=None) -> str:
    """Do one verb; returns the text to print. Raises MlcError on failure."""
    from ..core import snapshots, verbs

    if args.command == "list":
        text = verbs.list_snapshots(store, limit=args.limit, offset=args.offset, name=args.name,
                                    notebook=args.notebook, status=args.status,
                                    as_json=args.json)
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
        dest = snapshots.export(store, args.ref, args.dest, backend, tar=args.tar, k8s=args.k8s)
        return f"exported to {dest}: docker build -t snapshot {dest} && docker run --rm snapshot"
    if args.command == "stop":
        if backend.sessions.stop(args.name):
            return f"stopped session {args.name}"
        raise MlcError(f"No session {args.name!r} runs in this kernel; running: "
                       f"{', '.join(backend.sessions.sessions) or 'none'}.")
    if args.command == "prune":
        return "\n".join(snapshots.prune(store, backend)) or "nothing to prune"
    if args.command == "rerun":
        original = store.get(args.ref)["id"]  # before the rerun takes the same name
        outcome, problems = snapshots.rerun(store, original, backend, verify=args.verify,
                                            output=output)
        line = f"rerun {original} as {outcome.run_id}: {outcome.result.reason}"
        if args.verify and problems:
            raise VerificationFailed(line + "\nNOT reproduced:\n- " + "\n- ".join(problems),
                                     problems)
        return line + ("\nverified: outputs match the recorded digests" if args.verify else "")
    raise MlcError(f"unknown command {args.command}")


def _write(stream: str, text: str) -> None:
    target = sys.stdout if stream == "stdout" else sys.stderr
    target.write(text)
    target.flush()


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "doctor":
            from . import doctor

            return doctor.cmd_doctor(args)
        from ..backends.docker.backend import DockerBackend
        from ..core.store import Store
        from .magics import ContainerizeMagics

        settings = ContainerizeMagics(shell=None)  # the same defaults and env variables
        text = run_verb(args, store=Store(settings.store_dir),
                        backend=DockerBackend(namespace=settings.namespace), output=_write)
        if text:
            print(text)
        return 0
    except VerificationFailed as e:
        print(f"mlcontainer: {e}", file=sys.stderr)
        return 1
    except MlcError as e:
        print(f"mlcontainer: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
