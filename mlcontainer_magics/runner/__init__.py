"""The program that runs inside the container. It must need nothing but the standard library."""
from pathlib import Path

RUNNER_PATH = Path(__file__).with_name("mlc_runner.py")


def runner_source() -> bytes:
    return RUNNER_PATH.read_bytes()
