"""`mlcontainer`: the snapshot verbs (shared with the `%container` magic) and `doctor`.

Every failure is one line on stderr saying what to do, never a traceback: exit 1 when a rerun
did not reproduce, 2 for any other error, 130 on Ctrl-C.
"""

from __future__ import annotations

import sys

from ..errors import MlcError, VerificationFailed
from .commands import build_parser, run_verb


def _write(stream: str, text: str) -> None:
    target = sys.stdout if stream == "stdout" else sys.stderr
    target.write(text)
    target.flush()


def _serve_until_interrupted() -> int:
    """`mlcontainer serve`: the service lives as long as this process; Ctrl-C stops it."""
    import signal

    from ..core.services import REGISTRY, STOP_GRACE

    def interrupt(signum, frame):
        raise KeyboardInterrupt  # `kill PID` stops the service as Ctrl-C does

    signal.signal(signal.SIGTERM, interrupt)
    print("serving until Ctrl-C", file=sys.stderr, flush=True)
    try:
        REGISTRY.wait()
    except KeyboardInterrupt:
        REGISTRY.stop_all(grace=STOP_GRACE)
    return 0


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "doctor":
            from . import doctor

            return doctor.cmd_doctor(args)
        from ..backends import Backends
        from ..config import MlcontainerSettings
        from ..core.store import Store

        settings = MlcontainerSettings()
        text = run_verb(
            args, store=Store(settings.store_dir), backends=Backends(settings), output=_write
        )
        if text:
            print(text, flush=True)
        if args.command == "serve":
            return _serve_until_interrupted()
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
