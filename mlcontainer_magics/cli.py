"""`mlcontainer`: the snapshot verbs and `doctor` from a terminal."""
from __future__ import annotations

import argparse
import sys

from .errors import MlcError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mlcontainer", description="Containerized notebook runs and their snapshots.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("doctor", help="check (and with --fix, set up) the engine and base image")
    p.add_argument("--fix", action="store_true", help="start or install what is missing")
    p.add_argument("--base", help="base image to check (default: python:X.Y-slim)")
    p.add_argument("--json", action="store_true", help="machine-readable report")
    p.set_defaults(func=_doctor)
    return parser


def _doctor(args) -> int:
    from . import doctor

    return doctor.cmd_doctor(args)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except MlcError as e:
        print(f"mlcontainer: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
