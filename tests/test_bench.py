"""The benchmark suite in --short mode: every scenario runs once with tiny sizes and checks its
own correctness (ours and the plain-docker baseline print the same; editing a cell builds no
image). Timings are reported, never asserted: this machine is shared and noisy."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = "edited rerun cold add import list data session second serve map".split()


@pytest.mark.docker
def test_bench_short_runs_every_scenario_and_checks_pass(tmp_path, docker_client):
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), "--short", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    tail = f"\n--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-4000:]}"
    assert out.exists(), tail
    data = json.loads(out.read_text())
    assert data["mode"] == "short"
    assert list(data["scenarios"]) == SCENARIOS, tail
    for key, sc in data["scenarios"].items():
        assert sc["error"] is None, f"{key}: {sc['error']}{tail}"
        assert sc["checks"] and all(sc["checks"].values()), f"{key}: {sc['checks']}{tail}"
        primary = [r for r in sc["rows"] if r["primary"]]
        assert primary, key
        for row in sc["rows"]:
            for field in ("ours", "baseline", "ratio"):
                value = row[field]
                assert (
                    isinstance(value, (int, float))
                    and value == value
                    and abs(value) != float("inf")
                ), f"{key} {row['measure']}: {field}={value!r}"
            assert row["baseline"] > 0, f"{key} {row['measure']}"
        assert sc["target"] is not None and sc["pass"] is None  # short mode judges nothing
    assert data["scenarios"]["edited"]["checks"]["no_image_built"]
    assert data["scenarios"]["rerun"]["checks"]["no_image_built"]
    assert data["leftovers"] == {}, data["leftovers"]
    assert data["checks_passed"], tail
    assert proc.returncode == 0, tail
