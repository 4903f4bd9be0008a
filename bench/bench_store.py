"""Time listing a page of snapshots from a store of 100 and of 10,000 (target ratio <= 10).

    python bench/bench_store.py [--small 100] [--large 10000] [--limit 50] [--repeat 200]

Each store is filled in one transaction with records shaped like real runs (code, a lock of
40 packages, a few kB of output), then ``Store.list`` and the ``list_snapshots`` text of the
newest page, one notebook's newest 10 and ``Store.count`` are timed (median of ``--repeat``,
after a warm-up). A ratio near 1 means listing costs the same whatever the store holds; the
script exits 1 when a ratio exceeds 10.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mlcontainer_magics.core.store import (
    STATUSES,
    Store,  # noqa: E402
)
from mlcontainer_magics.core.verbs import list_snapshots  # noqa: E402

TARGET = 10.0


def record(i: int, t0: float) -> dict:
    return {
        "id": f"{i:06x}{'0' * 6}",
        "name": f"experiment-{i % 37}",
        "notebook": f"project/notebook-{i % 5}.ipynb",
        "cell": i % 50,
        "status": STATUSES[i % len(STATUSES)],
        "created": t0 + i,
        "finished": t0 + i + 3.5,
        "duration": 3.5,
        "exit_code": 0,
        "env_image": f"mlc-env:{i % 9:012x}",
        "image_size": 900_000_000 + i,
        "session": f"session-{i % 11}",
        "code": "import numpy as np\n" * 20,
        "spec": {"code": "import numpy as np\n" * 20, "cpus": 2.0, "memory": 2 << 30},
        "requirements": ["numpy==1.26.4", "pandas==2.2.1"],
        "lock": [
            {"name": f"pkg{k}", "version": "1.0.0", "hashes": ["sha256:" + "a" * 64]}
            for k in range(40)
        ],
        "stdout": "step done\n" * 300,
        "stderr": "",
        "timings": {"build": 0.1, "start": 0.3, "run": 3.5},
    }


def fill(root: Path, n: int) -> Store:
    store = Store(root)
    t0 = time.time() - n
    store.put_many(record(i, t0) for i in range(n))
    return store


def median_seconds(fn, repeat: int) -> float:
    fn()  # warm up: connection, page cache
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--small", type=int, default=100)
    p.add_argument("--large", type=int, default=10_000)
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--repeat", type=int, default=200)
    args = p.parse_args(argv)

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in (args.small, args.large):
            start = time.perf_counter()
            store = fill(Path(tmp) / str(n), n)
            filled = time.perf_counter() - start
            assert store.count() == n
            results[n] = {
                "Store.list": median_seconds(lambda: store.list(limit=args.limit), args.repeat),
                # 20 of every 100 are in notebook-3, so both stores fill this page of 10.
                "Store.list(notebook)": median_seconds(
                    lambda: store.list(limit=10, notebook="project/notebook-3.ipynb"), args.repeat
                ),
                "list_snapshots": median_seconds(
                    lambda: list_snapshots(store, limit=args.limit), args.repeat
                ),
                "Store.count": median_seconds(store.count, args.repeat),
            }
            print(
                f"filled {n:>6} snapshots in {filled:.2f}s "
                f"({filled / n * 1e6:.0f} us each, one transaction)"
            )
            store.close()

    worst = 0.0
    print(f"\nmedian of {args.repeat}, newest {args.limit}:")
    print(f"{'operation':<20} {args.small:>10} {args.large:>10}   ratio")
    for op in results[args.small]:
        small, large = results[args.small][op], results[args.large][op]
        ratio = large / small
        worst = max(worst, ratio)
        print(f"{op:<20} {small * 1e3:>8.3f}ms {large * 1e3:>8.3f}ms {ratio:>7.2f}")
    print(f"\nworst ratio {worst:.2f} (target <= {TARGET:g})")
    return 0 if worst <= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
