"""Runs a notebook cell inside its container: /mlc/cell.py, as if it were a notebook cell.

Standard library only, Python 3.6+: it runs in whatever base image the user picked.
"""
import sys
import traceback

CELL = "/mlc/cell.py"


def main():
    with open(CELL, encoding="utf-8") as f:
        source = f.read()
    namespace = {"__name__": "__main__", "__file__": CELL}
    try:
        exec(compile(source, CELL, "exec"), namespace)
    except SystemExit:
        raise
    except BaseException as e:  # noqa: BLE001 - report any failure of user code as a traceback
        # Drop this runner's own frame so the traceback starts in the cell.
        traceback.print_exception(type(e), e, e.__traceback__.tb_next)
        sys.stderr.flush()
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
