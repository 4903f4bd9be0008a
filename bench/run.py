#!/usr/bin/env python
"""The benchmark suite: mlcontainer-magics against plain docker, scenario by scenario.

    python bench/run.py [--repeat N] [--short] [--json PATH] [--only SCENARIO ...]

Every scenario runs ours and its baseline ALTERNATELY in the same process (ours first on even
repetitions, the baseline first on odd ones), so the noise of a shared machine falls on both;
read the ratios, not the absolute times. The table shows medians; the JSON keeps every sample.

Scenarios (target: ours / baseline):
  1 edited   a cell whose code changes every run, environment cached      <= 0.25
             vs `docker run --rm ENV_IMAGE python -c CODE`; no image may be built; it runs
             in the standby container the previous run left
  2 rerun    the same cell again                                          <= 1.1
  3 cold     first run of a numpy+pandas+scikit-learn cell: fresh namespace, empty wheel
             cache volume, vs a hand-written Dockerfile with pip, classic `docker build
             --no-cache` (+ `docker run` of the cell)                    <= 0.4
  4 add      + six on top of scenario 3's environment, same cache volume, vs scenario 3  <= 0.4
  5 import   `%load_ext mlcontainer_magics` vs `import ipywidgets`, fresh interpreters <= 1.5
  6 list     listing from 10,000 snapshots vs from 100 (CLI and REST)     <= 10
  7 data     a 200 MB array --in and --out vs np.save + np.load           <= 2
  8 session  a trivial cell in a warm session vs `docker run`             <= 0.3
  9 second   scikit-learn 1.5.2 after scenario 3's 1.4.2 (same numpy, pandas), same namespace,
             vs its own hand-written Dockerfile, `docker build --no-cache` (+ `docker run`)
                                                                         <= 0.2
  10 serve   a served cell's trivial /predict through the kernel's proxy, 16 keep-alive
             clients, vs a plain ThreadingHTTPServer of the same function in the same image
             under `docker run -p`: requests per second             >= 0.9
             and p99 latency                                             <= 1.2
  11 map     16 items each sleeping 1 s, --map --parallel 8, vs the ideal: 2 s plus one tiny
             %%containerize run's time, measured alongside                <= 1.3
             and 64 tiny items, --parallel 4, vs 64 sequential `docker run --rm` of the same
             image                                                        <= 0.5

Samples: --repeat N (default 5) pairs for scenario 7, 2N rounds for 10; 4N pairs for the cheap
scenarios (1, 2, 5, 6 CLI, 8), 20N for REST, 50N in-process; min(N, --cold-repeat) for 3, 4, 9
and 11.
A full run takes about 10-15 minutes, the cold builds most of it.

--short runs each scenario once with tiny sizes and checks correctness only (same output from
ours and the baseline, no image built by scenarios 1 and 2); tests/test_bench.py runs it.
Everything is made in a namespace of its own (mlcbench-<random>) and a temporary snapshot
store, and removed at the end, on Ctrl-C too. The exit status is 1 when a check failed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(HERE), str(ROOT)]

from harness import (  # noqa: E402
    BENCH_LABEL,
    NS_LABEL,
    CpuMeter,
    Janitor,
    JupyterServer,
    Row,
    Scenario,
    alternate,
    docker,
    interrupts_become_keyboardinterrupt,
    median,
    no_interrupts,
    stolen_core_seconds,
    table,
    timed_run,
)

ORDER = [
    "edited",
    "rerun",
    "cold",
    "add",
    "import",
    "list",
    "data",
    "session",
    "second",
    "serve",
    "map",
]
TITLES = {
    "edited": "Edited cell, same environment",
    "rerun": "Unchanged re-run",
    "cold": "Cold environment build",
    "add": "Adding one small package",
    "import": "%load_ext import time",
    "list": "Listing 10,000 snapshots vs 100",
    "data": "200 MB numpy array in and out",
    "session": "Warm session",
    "second": "A second environment sharing most wheels",
    "serve": "A served cell's /predict under load",
    "map": "A cell mapped over many items (--map)",
}
WARM_REQ = "six==1.16.0"  # the environment of scenarios 1, 2 and 8
DATA_REQ = "numpy==1.26.4"  # the container side of scenario 7
FULL = dict(
    cold=["numpy==1.26.4", "pandas==2.2.3", "scikit-learn==1.4.2"],
    cold_code="import numpy, pandas, sklearn\n"
    "print('cold', numpy.__version__, pandas.__version__, sklearn.__version__)",
    add="six==1.16.0",
    add_code="import numpy, pandas, sklearn, six\n"
    "print('add', numpy.__version__, pandas.__version__, sklearn.__version__,"
    " six.__version__)",
    second=["numpy==1.26.4", "pandas==2.2.3", "scikit-learn==1.5.2"],
    array_mb=200,
    list_sizes=(100, 10_000),
    # --map: (items, --parallel, seconds each sleeps) and (tiny items, --parallel)
    map_sleep=(16, 8, 1.0),
    map_tiny=(64, 4),
)
SHORT = dict(
    cold=["idna==3.7", "certifi==2024.8.30"],
    cold_code="import idna\nprint('cold', idna.__version__)",
    second=["idna==3.6", "certifi==2024.8.30"],
    add="six==1.16.0",
    add_code="import idna, six\nprint('add', idna.__version__, six.__version__)",
    array_mb=2,
    list_sizes=(100, 1_000),
    map_sleep=(4, 2, 0.2),
    map_tiny=(6, 2),
)
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class Bench:
    def __init__(self, args) -> None:
        self.args = args
        self.short = args.short
        self.sizes = SHORT if args.short else FULL
        self.n = 1 if args.short else args.repeat
        # the cheap scenarios (a second or less a sample) take more samples: on a shared
        # machine their medians need them
        self.cheap_n = 1 if args.short else 4 * args.repeat
        self.cold_n = 1 if args.short else min(args.repeat, args.cold_repeat)
        self.run_id = uuid.uuid4().hex[:8]
        self.ns = f"mlcbench-{self.run_id}"
        self.tmp = Path(tempfile.mkdtemp(prefix=f"{self.ns}-"))
        self.store_dir = self.tmp / "store"
        self.janitor = Janitor(self.run_id)
        self.janitor.namespace(self.ns)
        self.scenarios: dict[str, Scenario] = {}
        self.info: dict = {}
        # Subprocesses and anything reading the environment use this run's namespace and store.
        os.environ["MLCONTAINER_NAMESPACE"] = self.ns
        os.environ["MLCONTAINER_STORE"] = str(self.store_dir)
        # The product's default, whatever the caller's environment says (the test session
        # turns standby containers off for its leak checks).
        os.environ["MLCONTAINER_STANDBY"] = "1"
        self.env = dict(os.environ)
        self._ip = None
        self.last_stdout = ""  # the status lines and output of the last cell
        self.warm_image = None

    # -- the kernel side ----------------------------------------------------------------------

    @property
    def ip(self):
        if self._ip is None:
            from IPython.testing.globalipapp import get_ipython

            ip = get_ipython()
            ip.run_line_magic("load_ext", "mlcontainer_magics")
            self._ip = ip
            self.magics.namespace = self.ns
            self.magics.store_dir = str(self.store_dir)
        return self._ip

    @property
    def magics(self):
        return self.ip.magics_manager.registry["ContainerizeMagics"]

    @property
    def client(self):
        return self.janitor.client

    def cell(self, line: str, code: str, namespace: str | None = None):
        """(seconds, stdout, snapshot record) of one %%containerize cell; only the magic call
        is timed."""
        from IPython.utils.capture import capture_output

        from mlcontainer_magics.backends.docker.engine import settle_background

        ip = self.ip
        self.magics.namespace = namespace or self.ns
        with capture_output() as cap:
            t0 = time.perf_counter()
            try:
                ip.run_cell_magic("containerize", line, code)
            except BaseException:
                dt = None
                print(cap.stdout[-3000:], cap.stderr[-3000:], file=sys.stderr)
                raise
            dt = time.perf_counter() - t0
            self.last_stdout = cap.stdout
            # Untimed: the standby container a run starts in the background is ready before
            # anything else is timed, so its start never overlaps a baseline (or our next run).
            standbys = self.magics.backend.standbys
            if standbys is not None:
                standbys.settle()
            # ... and so is the removal of a build's container (its files deleted off the
            # cell's critical path): it never slows a baseline measured next.
            settle_background()
        record = self.magics.store.get(self.magics.store.list(limit=1)[0]["id"])
        return dt, cell_output(cap.stdout), record

    def ns_images(self, ns: str | None = None) -> list[str]:
        return sorted(
            i.id
            for i in self.client.images.list(
                all=True, filters={"label": f"{NS_LABEL}={ns or self.ns}"}
            )
        )

    def docker_run(self, image: str, code: str):
        dt, proc = docker(
            "run", "--rm", "--label", f"{NS_LABEL}={self.ns}", image, "python", "-c", code
        )
        return dt, proc.stdout

    def docker_fanout(self, image: str, code: str, count: int, parallel: int):
        """(seconds, what each printed) of ``count`` `docker run --rm` of ``code`` with
        ``xs`` = 0..count-1, ``parallel`` at a time: plain docker's own fan-out."""
        from concurrent.futures import ThreadPoolExecutor

        t0 = time.perf_counter()
        with ThreadPoolExecutor(parallel) as pool:
            codes = [f"xs = {x}\n{code}" for x in range(count)]
            printed = list(pool.map(lambda c: self.docker_run(image, c)[1].strip(), codes))
        return time.perf_counter() - t0, printed

    def ensure_warm_env(self):
        """The six==1.16.0 environment of scenarios 1, 2 and 8, built (untimed) once."""
        if self.warm_image is None:
            log(f"building the warm environment ({WARM_REQ}), untimed")
            _, out, rec = self.cell(f"-r {WARM_REQ}", "print('ready')")
            assert out.strip() == "ready", out
            self.warm_image = rec["env_image"]
            self.info["warm_env"] = {
                "image": rec["env_image"],
                "size": rec.get("image_size"),
                "build_s": rec.get("timings", {}).get("environment"),
            }
        return self.warm_image

    # -- scenarios ----------------------------------------------------------------------------

    def s_cached(self, sc: Scenario, edited: bool, target: float) -> None:
        image = self.ensure_warm_env()
        line = f"-r {WARM_REQ}"
        row = Row(
            "edited cell in a cached environment vs docker run --rm"
            if edited
            else "%%containerize vs docker run --rm (same code)",
            target=target,
            ours_label=f"%%containerize {line}",
            baseline_label=f"docker run --rm {image} python -c CODE",
        )
        sc.rows.append(row)

        def code(i):
            return f"x = {i}\nprint('edited', x, x * x)" if edited else "print('same', 6 * 7)"

        # warm-up, untimed: first container of this image, page cache
        self.cell(line, code(-1))
        self.docker_run(image, code(-1))
        before = self.ns_images()
        cached = []
        standby = []
        for i in range(self.cheap_n):
            c = code(i)
            res = {}

            def ours():
                dt, out, rec = self.cell(line, c)
                res["ours"] = out
                cached.append(rec.get("env_cached"))
                standby.append("running in standby container" in self.last_stdout)
                row.ours.append(dt)

            def base():
                dt, out = self.docker_run(image, c)
                res["base"] = out
                row.baseline.append(dt)

            for fn in (ours, base) if i % 2 == 0 else (base, ours):
                fn()
            sc.check(
                "same_output",
                res["ours"].strip() == res["base"].strip() and res["ours"].strip() != "",
                f"ours {res['ours']!r} vs {res['base']!r}",
            )
        after = self.ns_images()
        sc.check(
            "no_image_built", before == after, f"{len(before)} images before, {len(after)} after"
        )
        sc.check("env_cached_every_run", all(cached), f"env_cached {cached}")
        sc.check("standby_every_run", all(standby), f"ran in a standby: {standby}")
        sc.info["images_before_after"] = [len(before), len(after)]
        sc.notes.append(
            "Ours runs in the standby container the previous run of the environment left "
            "(started, its runner waiting on a FIFO); after each of our runs the bench waits, "
            "untimed, until the next standby is ready, so its start overlaps nothing timed. "
            "The baseline starts its container on the critical path, as `docker run` does."
        )

    def s_edited(self, sc):
        self.s_cached(sc, edited=True, target=0.25)

    def s_rerun(self, sc):
        self.s_cached(sc, edited=False, target=1.1)

    def s_cold(self, sc):
        """Scenarios 3, 4 and 9 together: 4 and 9 need 3's cache volume and image."""
        add_sc = self.scenarios.get("add")
        second_sc = self.scenarios.get("second")
        do_cold = "cold" in self.scenarios  # else only scenario 4 was asked for: no baseline
        z = self.sizes
        reqs = " ".join(z["cold"])
        line3 = f"--no-capture -r {reqs}"
        line4 = f"--no-capture -r {reqs} {z['add']}"
        base = self.magics.base_image
        cold_rows = {
            "total": Row(
                "first cell: build + run, vs docker build --no-cache + docker run",
                target=0.4,
                ours_label=f"%%containerize {line3} (fresh namespace, empty cache volume)",
                baseline_label="DOCKER_BUILDKIT=0 docker build --no-cache + docker run --rm",
            ),
            "build": Row(
                "  build only: environment phase vs docker build",
                target=0.4,
                primary=False,
                ours_label="snapshot timings['environment']",
                baseline_label="docker build --no-cache",
            ),
        }
        add_rows = {
            "total": Row(
                "+ one package (build + run) vs scenario 3's cold run",
                target=0.4,
                ours_label=f"%%containerize {line4} (same namespace: warm cache volume)",
                baseline_label=f"%%containerize {line3} (cold, scenario 3)",
            ),
            "build": Row(
                "  build only: environment phase vs scenario 3's", target=0.4, primary=False
            ),
        }
        reqs9 = " ".join(z["second"])
        line9 = f"--no-capture -r {reqs9}"
        second_rows = {
            "total": Row(
                "second environment (build + run) vs docker build --no-cache + docker run",
                target=0.2,
                ours_label=f"%%containerize {line9} (scenario 3's namespace: its wheel cache "
                "and image)",
                baseline_label="DOCKER_BUILDKIT=0 docker build --no-cache + docker run --rm",
            ),
            "build": Row(
                "  build only: environment phase vs docker build", target=0.2, primary=False
            ),
        }
        if do_cold:
            self.scenarios["cold"].rows += cold_rows.values()
        if add_sc is not None:
            add_sc.rows += add_rows.values()
        if second_sc is not None:
            second_sc.rows += second_rows.values()
        ctx = self.tmp / "dockerfile"
        ctx9 = self.tmp / "dockerfile-second"
        for folder, wanted in ((ctx, reqs), (ctx9, reqs9)):
            folder.mkdir(exist_ok=True)
            shutil.copyfile(CA_BUNDLE, folder / "ca.pem")
            (folder / "Dockerfile").write_text(
                f"FROM {base}\n"
                f"LABEL {BENCH_LABEL}={self.run_id}\n"
                "COPY ca.pem /tmp/ca.pem\n"
                "RUN python -m pip install --cert /tmp/ca.pem --no-cache-dir "
                f"--disable-pip-version-check {wanted}\n"
            )
        sc.info["dockerfile"] = (ctx / "Dockerfile").read_text()
        second_code = z["cold_code"].replace("'cold'", "'second'")
        self.ip  # noqa: B018 - load the extension outside the timings

        for k in range(self.cold_n):
            nsk = self.janitor.namespace(f"{self.ns}-c{k}")
            out = {}

            def built(scenario, what, line, code, rows):
                """One of our cells that must build an image: its times into ``rows``."""
                s0 = stolen_core_seconds()
                dt, o, rec = self.cell(line, code, namespace=nsk)
                scenario.info.setdefault("ours_stolen_s", []).append(
                    round(stolen_core_seconds() - s0, 2)
                )
                rows["total"].ours.append(dt)
                rows["build"].ours.append(rec["timings"]["environment"])
                # the status display's step line ("uv resolve 0.3 s, uv install 1.1 s, ...")
                steps = [x for x in self.last_stdout.splitlines() if " commit " in x]
                scenario.info.setdefault("ours_build_steps", []).append(
                    steps[-1].split("]", 1)[-1].strip() if steps else None
                )
                scenario.info.setdefault("ours_run_s", []).append(rec["timings"].get("run"))
                scenario.check(
                    f"{what}_built_an_image",
                    rec.get("env_cached") is False,
                    f"env_cached={rec.get('env_cached')}",
                )
                return dt, o, rec

            def ours():
                log(f"cold {k}: ours (namespace {nsk})")
                dt, out["ours3"], rec = built(sc, "cold", line3, z["cold_code"], cold_rows)
                if k == 0:
                    sc.info["cache_volume_mb_after_cold"] = self.volume_mb(f"{nsk}-pip-cache", base)
                    sc.info["env_image_size"] = rec.get("image_size")
                if add_sc is not None:
                    log(f"cold {k}: ours + {z['add']}")
                    _, o4, _ = built(add_sc, "added_package", line4, z["add_code"], add_rows)
                    add_rows["total"].baseline.append(dt)
                    add_rows["build"].baseline.append(rec["timings"]["environment"])
                    want = (
                        out["ours3"].strip().replace("cold", "add", 1)
                        + " "
                        + z["add"].split("==")[1]
                    )
                    add_sc.check("same_output", o4.strip() == want, f"{o4!r} vs {want!r}")
                if second_sc is not None:
                    log(f"cold {k}: ours, a second environment: {reqs9}")
                    out["ours9"] = built(second_sc, "second", line9, second_code, second_rows)[1]

            def baseline():
                tag = f"{self.ns}-docker:c{k}"
                log(f"cold {k}: docker build --no-cache")
                env = {**self.env, "DOCKER_BUILDKIT": "0"}
                s0 = stolen_core_seconds()
                t0 = time.perf_counter()
                dtb, _ = docker("build", "--no-cache", "--rm", "-q", "-t", tag, str(ctx), env=env)
                dtr, proc = docker(
                    "run",
                    "--rm",
                    "--label",
                    f"{NS_LABEL}={self.ns}",
                    tag,
                    "python",
                    "-c",
                    z["cold_code"],
                )
                cold_rows["total"].baseline.append(time.perf_counter() - t0)
                cold_rows["build"].baseline.append(dtb)
                sc.info.setdefault("baseline_stolen_s", []).append(
                    round(stolen_core_seconds() - s0, 2)
                )
                out["base3"] = proc.stdout
                if k == 0:
                    size = self.client.images.get(tag).attrs.get("Size")
                    sc.info["docker_image_size"] = size
                if second_sc is not None:
                    log(f"cold {k}: docker build --no-cache of the second environment")
                    s0 = stolen_core_seconds()
                    t0 = time.perf_counter()
                    dtb9, _ = docker(
                        "build", "--no-cache", "--rm", "-q", "-t", f"{tag}9", str(ctx9), env=env
                    )
                    _, proc9 = docker(
                        "run",
                        "--rm",
                        "--label",
                        f"{NS_LABEL}={self.ns}",
                        f"{tag}9",
                        "python",
                        "-c",
                        second_code,
                    )
                    second_rows["total"].baseline.append(time.perf_counter() - t0)
                    second_rows["build"].baseline.append(dtb9)
                    second_sc.info.setdefault("baseline_stolen_s", []).append(
                        round(stolen_core_seconds() - s0, 2)
                    )
                    out["base9"] = proc9.stdout

            sides = (ours, baseline) if k % 2 == 0 else (baseline, ours)
            for fn in sides if do_cold or second_sc is not None else (ours,):
                fn()
            if second_sc is not None:
                second_sc.check(
                    "same_output",
                    out["ours9"].strip() == out["base9"].strip()
                    and out["ours9"].startswith("second"),
                    f"{out['ours9']!r} vs {out['base9']!r}",
                )
            if do_cold:
                sc.check(
                    "same_output",
                    out["ours3"].strip() == out["base3"].strip()
                    and out["ours3"].startswith("cold"),
                    f"{out['ours3']!r} vs {out['base3']!r}",
                )
            log(f"cold {k}: removing both sides' images and the cache volume")
            self.janitor.remove_namespace(nsk)
            self.janitor.remove_baseline_images()
        sc.notes.append(
            "Both sides cold: ours gets a fresh namespace (no environment image, EMPTY pip "
            "cache volume); the baseline builds with --no-cache and pip --no-cache-dir, images "
            "removed between repetitions. The pip download cache is COLD for both. The "
            "container reaches PyPI through this machine's TLS-intercepting proxy: the "
            "hand-written Dockerfile gets the same host CA bundle (COPY ca.pem + pip --cert; "
            "it stays in an image layer, which ours avoids) and --disable-pip-version-check, "
            "as ours sets. Both times include running the cell once in the new image."
        )
        if second_sc is not None:
            second_sc.notes.append(
                f"Ours in scenario 3's namespace after its runs: {reqs9} shares all but one "
                "pin with scenario 3's environment, so it is built on that image (uv installs "
                "the one package that differs, from the shared wheel cache volume for the rest) "
                "and only the difference is committed. The baseline builds its own hand-written "
                "Dockerfile with --no-cache, as a user without this tool would."
            )
        if add_sc is not None:
            add_sc.notes.append(
                f"Ours in scenario 3's namespace right after its cold run: the spec changes "
                f"(+ {z['add']}), so a new image is built. It adds to scenario 3's image (same "
                f"base, its requirements a subset): only {z['add']} is installed, as a layer "
                f"on top, with the shared pip cache volume ({self.ns}-cN-pip-cache) for "
                f"downloads. Paired with the same repetition's cold run."
            )

    def volume_mb(self, volume: str, base: str):
        try:
            _, proc = docker(
                "run",
                "--rm",
                "--label",
                f"{NS_LABEL}={self.ns}",
                "-v",
                f"{volume}:/c:ro",
                base,
                "du",
                "-sm",
                "/c",
            )
            return int(proc.stdout.split()[0])
        except Exception:
            return None

    def s_import(self, sc):
        py = sys.executable
        variants = {
            "A": "from IPython.testing.globalipapp import get_ipython; ip = get_ipython(); "
            "ip.run_line_magic('load_ext', 'mlcontainer_magics')",
            "A0": "from IPython.testing.globalipapp import get_ipython; ip = get_ipython()",
            "B": "import ipywidgets",
            "B0": "pass",
        }
        env = {k: v for k, v in self.env.items() if k != "PYTHONDONTWRITEBYTECODE"}
        samples = {k: [] for k in variants}
        for code in variants.values():  # warm-up: .pyc files, page cache
            timed_run([py, "-c", code], env=env)
        for i in range(self.cheap_n):
            keys = list(variants)
            keys = keys[i % 4 :] + keys[: i % 4]
            for k in keys:
                samples[k].append(timed_run([py, "-c", variants[k]], env=env)[0])
        m = {k: median(v) for k, v in samples.items()}
        row = Row(
            "load_ext (A - A0) vs import ipywidgets (B - B0)",
            target=1.5,
            ours_value=m["A"] - m["A0"],
            baseline_value=m["B"] - m["B0"],
            ours_label="median(A) - median(A0)",
            baseline_label="median(B) - median(B0)",
        )
        row.ours, row.baseline = samples["A"], samples["B"]
        sc.rows.append(row)
        sc.info["medians_s"] = m
        sc.info["variants"] = variants
        sc.info["samples_s"] = samples
        # -X importtime self-report, for the record (one run each)
        it_a = importtime(py, variants["A"], "mlcontainer_magics", env)
        it_b = importtime(py, variants["B"], "ipywidgets", env)
        sc.rows.append(
            Row(
                "  -X importtime: mlcontainer_magics vs ipywidgets (cumulative)",
                target=1.5,
                primary=False,
                ours_value=it_a,
                baseline_value=it_b,
            )
        )
        sc.info["importtime_top"] = importtime_top(py, variants["A"], "mlcontainer_magics", env)
        sc.check("numbers", all(x > 0 for x in m.values()), str(m))
        sc.check("extension_loads", True)
        sc.notes.append(
            "Fresh interpreters, wall clock of `python -c`, alternating the four variants. "
            "A = get the test IPython shell and %load_ext mlcontainer_magics; A0 = the same "
            "without load_ext; B = import ipywidgets; B0 = `pass` (bare interpreter). Ours = "
            "A - A0 (IPython already loaded, as in a kernel), baseline = B - B0 (ipywidgets "
            "pays for importing IPython itself: the like-for-like view of what a user waits "
            "for). The -X importtime row sums the cumulative import time of the top-level "
            "mlcontainer_magics imports vs that of ipywidgets."
        )

    def s_list(self, sc):
        from bench_store import fill

        from mlcontainer_magics.core.store import Store
        from mlcontainer_magics.core.verbs import list_snapshots

        small, large = self.sizes["list_sizes"]
        stores = {}
        for n in (small, large):
            root = self.tmp / f"list-{n}"
            t0 = time.perf_counter()
            s = fill(root, n)
            sc.info[f"fill_{n}_s"] = round(time.perf_counter() - t0, 3)
            sc.check("filled", s.count() == n, f"{s.count()} != {n}")
            s.close()
            stores[n] = root
        cli = shutil.which("mlcontainer", path=str(Path(sys.executable).parent)) or shutil.which(
            "mlcontainer"
        )
        argv = (
            [cli, "list"]
            if cli
            else [sys.executable, "-m", "mlcontainer_magics.frontends.cli", "list"]
        )
        sc.info["cli"] = " ".join(argv)

        def cli_list(n, as_json=False):
            env = {**self.env, "MLCONTAINER_STORE": str(stores[n])}
            dt, proc = timed_run(argv + (["--json"] if as_json else []), env=env)
            return dt, proc.stdout

        # correctness: both list the newest 50, the same ids as the REST API
        cli_ids = {}
        for n in (small, large):
            lines = cli_list(n)[1].strip().splitlines()
            sc.check("cli_lists_a_page", len(lines) == min(50, n), f"{len(lines)} lines")
            cli_ids[n] = [x["id"] for x in json.loads(cli_list(n, True)[1])]
        row = Row(
            f"CLI `mlcontainer list`: {large:,} vs {small:,} snapshots",
            target=10.0,
            ours_label=f"{large:,}",
            baseline_label=f"{small:,}",
        )
        sc.rows.append(row)
        for i in range(self.cheap_n):
            for n in (large, small) if i % 2 == 0 else (small, large):
                (row.ours if n == large else row.baseline).append(cli_list(n)[0])

        # REST: two real servers, one per store
        servers = {}
        for n in (small, large):
            srv = JupyterServer(stores[n], self.tmp / f"jupyter-{n}", self.env)
            self.janitor.servers.append(srv)
            log(f"list: starting a jupyter server on 127.0.0.1:{srv.port} ({n} snapshots)")
            servers[n] = srv.start()
        rest = Row(
            f"REST GET /mlcontainer/snapshots: {large:,} vs {small:,}",
            target=10.0,
            ours_label=f"{large:,}",
            baseline_label=f"{small:,}",
        )
        sc.rows.append(rest)
        path = "/mlcontainer/snapshots?limit=50"
        for n in (small, large):
            page = servers[n].get(path)
            servers[n].get(path)
            sc.check(
                "rest_lists_a_page",
                len(page["items"]) == min(50, n) and page["total"] == n,
                f"{len(page['items'])} items, total {page['total']}",
            )
            sc.check(
                "rest_matches_cli",
                [x["id"] for x in page["items"]] == cli_ids[n],
                "REST and CLI list different snapshots",
            )
        k = 1 if self.short else 20 * self.n
        for i in range(k):
            for n in (large, small) if i % 2 == 0 else (small, large):
                t0 = time.perf_counter()
                servers[n].get(path)
                (rest.ours if n == large else rest.baseline).append(time.perf_counter() - t0)
        for srv in servers.values():
            srv.stop()

        # in-process, the store bench folded in
        for label, fn in [
            ("Store.list(limit=50)", lambda s: s.list(limit=50)),
            ("list_snapshots text", lambda s: list_snapshots(s, limit=50)),
            ("Store.count", lambda s: s.count()),
        ]:
            r = Row(f"  in-process {label}: {large:,} vs {small:,}", target=10.0, primary=False)
            opened = {n: Store(stores[n]) for n in (small, large)}
            for s in opened.values():
                fn(s)
            for i in range(1 if self.short else 50 * self.n):
                for n in (large, small) if i % 2 == 0 else (small, large):
                    t0 = time.perf_counter()
                    fn(opened[n])
                    (r.ours if n == large else r.baseline).append(time.perf_counter() - t0)
            for s in opened.values():
                s.close()
            sc.rows.append(r)
        sc.notes.append(
            "Stores filled with bench_store.py's records (code, a 40-package lock, 3 kB of "
            "output each). CLI: `mlcontainer list` as a subprocess (newest 50; includes "
            "interpreter start and imports). REST: a real jupyter server per store on "
            "127.0.0.1 with a token and the extension enabled, GET "
            "/mlcontainer/snapshots?limit=50 (page + total count)."
        )

    def s_data(self, sc):
        import numpy as np

        mb = self.sizes["array_mb"]
        big = np.arange(mb * 2**20 // 8, dtype=np.float64)
        tiny = np.arange(16, dtype=np.float64)
        line = f"--no-capture -r {DATA_REQ} --in a --out b"
        ip = self.ip
        log(f"data: building the {DATA_REQ} environment, untimed")
        ip.user_ns["a"] = tiny
        _, _, warm = self.cell(line, "b = a")
        env_image = warm["env_image"]
        raw = Row(
            f"raw: run with {mb} MB array vs np.save + np.load",
            target=2.0,
            primary=False,
            ours_label="%%containerize --in a --out b, b = a",
            baseline_label="np.save(path, a); b = np.load(path)",
        )
        net = Row(
            f"net: (run with {mb} MB - run with 128 B) vs np.save + np.load",
            target=2.0,
            baseline_label="np.save + np.load",
        )
        tiny_s = []
        path = Path(tempfile.gettempdir()) / f"{self.ns}-data.npy"

        def ours_with(value):
            ip.user_ns["a"] = value
            dt, out, rec = self.cell(line, "b = a")
            b = ip.user_ns.pop("b")
            ok = b.shape == value.shape and np.array_equal(b, value)
            shutil.rmtree(self.magics.store.artifacts_dir(rec["id"]), ignore_errors=True)
            ip.user_ns.pop("a", None)
            return dt, ok, rec

        def ours_big():
            dt, ok, rec = ours_with(big)
            raw.ours.append(dt)
            sc.check("ours_round_trip_equal", ok, "b != a")
            sc.info.setdefault("ours_timings", []).append(rec.get("timings"))

        def ours_tiny():
            dt, ok, _ = ours_with(tiny)
            tiny_s.append(dt)
            sc.check("ours_round_trip_equal", ok, "b != a (tiny)")

        def save_load(where: Path, samples: list, what: str) -> None:
            t0 = time.perf_counter()
            np.save(where, big)
            b = np.load(where)
            samples.append(time.perf_counter() - t0)
            sc.check("baseline_round_trip_equal", np.array_equal(b, big), f"np.load != a{what}")
            where.unlink()

        def baseline():
            save_load(path, raw.baseline, "")

        # The same np.save + np.load in the folder ours puts run folders in (RAM, when it is a
        # tmpfs): shown beside the judged row, so that it is clear what the medium gives.
        from mlcontainer_magics.core import runs

        root = runs.run_folder_root()
        in_ram = root is not None and runs.in_memory(root)
        ram_row = Row(
            f"net vs np.save + np.load in {root} (where ours puts run folders)",
            target=None,
            primary=False,
            baseline_label=f"np.save(path, a); b = np.load(path), path in {root}",
        )
        ram_path = Path(root or tempfile.gettempdir()) / f"{self.ns}-data.npy"

        def baseline_ram():
            save_load(ram_path, ram_row.baseline, " (RAM)")

        # The same crossing with the plain docker CLI: np.save on the host, `docker run` of the
        # same environment image doing np.load + np.save on a bind-mounted folder, np.load on
        # the host; no digests, no snapshot. What any container round trip costs.
        plain = Row(
            f"net, plain docker doing the same crossing ({mb} MB - 128 B)",
            target=None,
            primary=False,
            ours_label="%%containerize --in a --out b (net, as above)",
            baseline_label="np.save; docker run -v DIR:/d ENV (np.load, np.save); np.load (net)",
        )
        plain_big, plain_tiny = [], []
        xdir = self.tmp / "plain-docker"
        code = "import numpy as np; a = np.load('/d/a.npy'); b = a; np.save('/d/out/b.npy', b)"

        def plain_with(value, samples):
            shutil.rmtree(xdir, ignore_errors=True)
            (xdir / "out").mkdir(parents=True)
            (xdir / "out").chmod(0o777)
            t0 = time.perf_counter()
            np.save(xdir / "a.npy", value)
            docker(
                "run",
                "--rm",
                "--label",
                f"{NS_LABEL}={self.ns}",
                "-u",
                "1000:1000",
                "-v",
                f"{xdir}:/d",
                env_image,
                "python",
                "-c",
                code,
            )
            b = np.load(xdir / "out" / "b.npy")
            samples.append(time.perf_counter() - t0)
            sc.check("plain_docker_round_trip_equal", np.array_equal(b, value), "b != a")
            shutil.rmtree(xdir, ignore_errors=True)

        def plain_docker_big():
            plain_with(big, plain_big)

        def plain_docker_tiny():
            plain_with(tiny, plain_tiny)

        ours_tiny()  # warm-up
        ours_big()
        baseline()
        plain_docker_big()
        fns = [ours_big, ours_tiny, baseline, plain_docker_big, plain_docker_tiny]
        if in_ram:
            baseline_ram()
            fns.append(baseline_ram)
        for samples in (raw.ours, raw.baseline, tiny_s, plain_big, ram_row.baseline):
            samples.clear()
        for i in range(self.n):
            k = i % len(fns)
            for fn in fns[k:] + fns[:k]:
                fn()
        net.ours = list(raw.ours)
        net.baseline = list(raw.baseline)
        net.ours_value = median(raw.ours) - median(tiny_s)
        net.ours_label = f"median(run {mb} MB) - median(run 128 B) = data movement only"
        plain.baseline = list(plain_big)
        plain_net = median(plain_big) - median(plain_tiny)
        if plain_net > 0 and net.ours_value > 0:
            plain.ours_value, plain.baseline_value = net.ours_value, plain_net
        else:  # tiny sizes (--short): the difference is noise; compare whole runs instead
            plain.measure = f"raw: run with {mb} MB vs plain docker doing the same crossing"
            plain.ours = list(raw.ours)
        sc.info["plain_docker_s"] = {"big": plain_big, "tiny": plain_tiny}
        sc.rows += [net, raw, plain]
        if in_ram:
            ram_row.ours_value = net.ours_value
            ram_row.ours_label = net.ours_label
            sc.rows.append(ram_row)
        sc.info["run_folder_root"] = root
        sc.info["run_folder_in_ram"] = in_ram
        sc.info["tiny_run_s"] = tiny_s
        sc.info["host_side_breakdown_s"] = data_breakdown(big, self.tmp / "breakdown")
        self._big, self._tiny = big, tiny  # for the profile
        sc.info["array_bytes"] = int(big.nbytes)
        sc.notes.append(
            "Ours moves the array host -> container -> host through files in the run's "
            "folder (np.save on the host, np.load (mapped) + np.save in the container, np.load "
            "on the host), in RAM where /dev/shm is a tmpfs with room, and digests it twice "
            "for the snapshot (xxh3-128 of the input and the output, each on a second thread: "
            "the input's while the container starts, copying it into the snapshot store in "
            "the same pass, the output's while it is loaded); the baseline is one np.save + "
            "np.load in the system's temp folder: half the passes over the data, no container "
            "process. The raw ratio also charges ours a whole container run (~0.5 s, scenario "
            "2), which no array size changes; the net ratio subtracts the same run with a "
            "128-byte array, leaving what moving 200 MB costs. The net row is the one judged. "
            "The plain docker row does the same crossing with the docker CLI (host np.save, a "
            "container's np.load + np.save on a bind mount, host np.load; net of a 128-byte "
            "run): what a container round trip costs before any snapshot bookkeeping. The "
            "last row (when run folders are in RAM) compares with np.save + np.load in that "
            "same RAM folder."
        )

    def s_session(self, sc):
        image = self.ensure_warm_env()
        line = f"-r {WARM_REQ} --session bench"
        code = "print('warm', 6 * 7)"
        row = Row(
            "warm session cell vs docker run --rm",
            target=0.3,
            ours_label=f"%%containerize {line}",
            baseline_label=f"docker run --rm {image} python -c CODE",
        )
        sc.rows.append(row)
        t0 = time.perf_counter()
        self.cell(line, "print('start')")
        sc.info["session_start_s"] = round(time.perf_counter() - t0, 3)
        self.docker_run(image, code)
        try:
            for i in range(self.cheap_n):
                res = {}

                def ours():
                    dt, out, rec = self.cell(line, code)
                    res["ours"] = out
                    row.ours.append(dt)

                def base():
                    dt, out = self.docker_run(image, code)
                    res["base"] = out
                    row.baseline.append(dt)

                for fn in (ours, base) if i % 2 == 0 else (base, ours):
                    fn()
                sc.check(
                    "same_output",
                    res["ours"].strip() == res["base"].strip() == "warm 42",
                    f"{res['ours']!r} vs {res['base']!r}",
                )
        finally:
            from IPython.utils.capture import capture_output

            with capture_output():
                self.ip.run_line_magic("container", "stop bench")
        sc.notes.append(
            "The session starts (untimed) with the first cell; then each cell is a "
            "socket round trip into the running interpreter."
        )

    def s_serve(self, sc):
        from bench_serve import FUNCTION, answers, load, plain_run_argv, published_url

        from mlcontainer_magics.core import services

        name, clients, procs = "bench", 16, 16
        warmup, duration = (0.2, 0.5) if self.short else (1.0, 3.0)
        log("serve: serving the cell (untimed)")
        _, _, rec = self.cell(f"--serve {name}", FUNCTION)
        ours = services.REGISTRY.get(name)
        plain = f"{self.ns}-plain-server"
        try:
            docker(*plain_run_argv(rec["env_image"], plain, {NS_LABEL: self.ns})[1:])
            urls = {"ours": ours.url, "baseline": published_url(plain)}
            sc.check("plain_server_answers", answers(urls["baseline"]), urls["baseline"])
            sc.check("ours_answers", answers(urls["ours"]), urls["ours"])
            sc.info["urls"] = urls
            rows = {
                "rps": Row(
                    f"requests per second, {clients} keep-alive clients",
                    target=0.9,
                    higher=True,
                    unit="req/s",
                    ours_label=f"%%containerize --serve {name}: POST {ours.url}/predict "
                    "(the kernel's proxy)",
                    baseline_label="ThreadingHTTPServer, docker run -p 127.0.0.1::8080 "
                    "(same image)",
                ),
                "p99": Row("p99 latency", target=1.2),
                "p50": Row("p50 latency", target=None, primary=False),
            }
            sc.rows += rows.values()
            runs: dict = {"ours": [], "baseline": []}

            def side(key):
                def measure():
                    out = load(urls[key], clients, procs, warmup, duration)
                    runs[key].append(out)
                    for measure_, row in rows.items():
                        (row.ours if key == "ours" else row.baseline).append(out[measure_])

                return measure

            log(f"serve: warm-up, then {max(1, 2 * self.n) if not self.short else 1} rounds")
            for key in urls:  # warm-up, untimed: threads, caches, the proxy's first links
                load(urls[key], clients, procs, warmup, warmup)
            for i in range(1 if self.short else 2 * self.n):
                alternate(i, side("ours"), side("baseline"))
            meta = ours_metadata(ours.url)
        finally:
            docker("rm", "-f", plain, check=False)
            from IPython.utils.capture import capture_output

            with capture_output():
                self.ip.run_line_magic("container", f"stop {name}")
        for key, results in runs.items():
            sc.check(
                f"{key}_no_failures",
                not any(r["failures"] for r in results),
                str([r["failure_examples"] for r in results if r["failures"]]),
            )
            sc.info[key] = [
                {k: v for k, v in r.items() if k != "failure_examples"} for r in results
            ]
        sc.check(
            "ours_counted_every_request",
            meta["errors"] == 0 and meta["requests"] >= sum(r["sent"] for r in runs["ours"]),
            f"/metadata {meta} after {sum(r['sent'] for r in runs['ours'])} timed requests",
        )
        sc.notes.append(
            f"Each round runs {clients} clients for {warmup:g} s of warm-up and {duration:g} s "
            f"measured, in {procs} processes of their own (one http.client connection per "
            "client, kept while the server keeps it, opened again when it closes it: the same "
            "client code for both sides). Rounds alternate ours and the baseline; req/s, p50 and "
            "p99 are each round's, the table their medians. The baseline is the same function "
            "in the image ours runs in, a ThreadingHTTPServer without its access log, published "
            "with plain `docker run -p 127.0.0.1::8080` (the engine's own proxy in front); ours "
            "is what the notebook is given: the kernel's proxy in front of the runner's server, "
            "which logs every request. client_cpu_cores is what the load generator itself used."
        )

    def s_map(self, sc):
        """Scenario 11: fan-out. Ours is the whole %%containerize --map cell, as the notebook
        waits for it (items written, every container started and removed, values gathered,
        the snapshot recorded)."""
        image = self.ensure_warm_env()
        count, parallel, sleep = self.sizes["map_sleep"]
        waves = -(-count // parallel)
        tiny_line = f"-r {WARM_REQ}"
        sleep_line = f"-r {WARM_REQ} --map xs --parallel {parallel} --out y,span"
        sleep_code = (
            "import time\nt0 = time.time()\n"
            f"time.sleep({sleep})\n"
            "y = xs * 2\nspan = [t0, time.time()]\n"
        )
        ideal = Row(
            f"{count} items sleeping {sleep:g} s, --parallel {parallel}, vs the ideal "
            f"({waves} x {sleep:g} s + one tiny run)",
            target=1.3,
            ours_label=f"%%containerize {sleep_line}",
            baseline_label=f"{waves * sleep:g} s + %%containerize {tiny_line} of `pass`, "
            "timed alongside",
        )
        fanout = Row(
            f"  the same {count} items with plain docker run --rm, {parallel} at a time",
            target=None,
            primary=False,
            ours_label=f"%%containerize {sleep_line}",
            baseline_label=f"{count} x docker run --rm {image} python -c CODE from {parallel} "
            "threads",
        )
        n_tiny, p_tiny = self.sizes["map_tiny"]
        tiny_map = f"-r {WARM_REQ} --map xs --parallel {p_tiny} --out y"
        tiny_code = "y = xs * xs\nprint(y)"
        tiny = Row(
            f"{n_tiny} tiny items, --parallel {p_tiny}, vs {n_tiny} sequential docker run --rm",
            target=0.5,
            ours_label=f"%%containerize {tiny_map}",
            baseline_label=f"{n_tiny} x docker run --rm {image} python -c CODE",
        )
        tiny_fanout = Row(
            f"  the same {n_tiny} tiny items with plain docker run --rm, {p_tiny} at a time",
            target=None,
            primary=False,
            ours_label=f"%%containerize {tiny_map}",
            baseline_label=f"{n_tiny} x docker run --rm {image} python -c CODE from {p_tiny} "
            "threads",
        )
        sc.rows += [ideal, fanout, tiny, tiny_fanout]
        self.ip.user_ns["xs"] = list(range(count))
        # warm-up, untimed: the first containers of this image, the page cache
        self.cell(tiny_line, "pass")
        self.ip.user_ns["xs"] = list(range(min(count, parallel)))
        self.cell(sleep_line, sleep_code.replace(str(sleep), "0"))
        most, rates, waves_started = [], [], []
        cpu = CpuMeter()  # the machine's busy core-seconds during each side's timed work
        for i in range(self.cold_n):
            self.ip.user_ns["xs"] = list(range(count))

            def ours_sleep():
                began = time.time()
                dt, _, rec = cpu.measure("ours_sleep", self.cell, sleep_line, sleep_code)
                ideal.ours.append(dt)
                spans = self.ip.user_ns["span"]
                most.append(most_at_once(spans))
                waves_started.append(wave_starts(spans, parallel, began))
                sc.check("sleep_items_done", rec["status"] == "done", rec.get("reason", ""))
                sc.check(
                    "sleep_items_in_order",
                    self.ip.user_ns["y"] == [x * 2 for x in range(count)],
                    str(self.ip.user_ns["y"]),
                )

            def one_tiny_run():
                dt, _, _ = self.cell(tiny_line, "pass")
                ideal.baseline.append(waves * sleep + dt)

            def plain_fanout():
                fanout.baseline.append(
                    cpu.measure(
                        "plain_fanout_sleep", self.docker_fanout, image, sleep_code, count, parallel
                    )[0]
                )
                fanout.ours.append(ideal.ours[-1])

            alternate(i, ours_sleep, one_tiny_run)
            plain_fanout()
            sc.check("never_more_than_parallel", max(most) <= parallel, f"at most {most}")
        sc.info["sleep_items_at_once"] = most
        for i in range(self.cold_n):
            self.ip.user_ns["xs"] = list(range(n_tiny))
            res = {}

            def ours_tiny():
                dt, _, rec = cpu.measure("ours_tiny", self.cell, tiny_map, tiny_code)
                tiny.ours.append(dt)
                rates.append(round(n_tiny / dt, 2))
                res["ours"] = [str(v) for v in self.ip.user_ns["y"]]
                sc.check("tiny_items_done", rec["status"] == "done", rec.get("reason", ""))

            def base_tiny():
                t0, out = time.perf_counter(), []
                for x in range(n_tiny):
                    _, printed = self.docker_run(image, f"xs = {x}\n{tiny_code}")
                    out.append(printed.strip())
                tiny.baseline.append(time.perf_counter() - t0)
                res["base"] = out

            alternate(i, ours_tiny, lambda: cpu.measure("sequential_tiny", base_tiny))
            dt, printed = cpu.measure(
                "plain_fanout_tiny", self.docker_fanout, image, tiny_code, n_tiny, p_tiny
            )
            tiny_fanout.baseline.append(dt)
            tiny_fanout.ours.append(tiny.ours[-1])
            sc.check("same_output_fanout", printed == res["base"], f"{printed} vs {res['base']}")
            sc.check("same_output", res["ours"] == res["base"], f"{res['ours']} vs {res['base']}")
        sc.info["tiny_items_per_s"] = rates
        sc.info["cores"] = cores = os.cpu_count() or 1
        sc.info["sleep_waves_started_after_s"] = waves_started
        sc.info["busy_core_s"] = cpu.spent
        # What the CPU allows: a side that spends c core-seconds per item cannot end n items in
        # less than n * c / cores (row 1: less its items' sleeping, which costs no CPU).
        per_item = {
            label: round(median(spent) / (n_tiny if label.endswith("tiny") else count), 3)
            for label, spent in cpu.spent.items()
        }
        sc.info["busy_core_s_per_item"] = per_item
        floor = {
            label: round(n_tiny * c / cores / median(tiny.baseline), 3)
            for label, c in per_item.items()
            if label.endswith("tiny")
        }
        sc.info["tiny_cpu_floor_ratio"] = floor
        sc.notes.append(
            "CPU (busy core-seconds of the whole machine per item, medians; other work on the "
            "machine counts too: read it from a quiet run): "
            + ", ".join(f"{k} {v}" for k, v in per_item.items())
            + f". At that CPU per item, {n_tiny} tiny items on {cores} cores take at least "
            + ", ".join(f"{v} ({k})" for k, v in floor.items())
            + " of the sequential baseline's median wall time. Row 1's last item of each wave "
            "had started (s after the cell began; after the first wave's first item ended): "
            f"{waves_started}."
        )
        sc.notes.append(
            "Ours is the whole --map cell as the notebook waits for it: the items written to "
            "the run's folder once, one container per item (created, attached, started, "
            "waited for, removed) at most --parallel at once, the values gathered in order and "
            "the snapshot recorded. Row 1's baseline is the ideal wall time of "
            f"{waves} waves of {sleep:g} s plus one tiny %%containerize run (a standby "
            "container's, the fastest a single cell gets), timed in the same repetition; its "
            "items' own start and end times check that no more than --parallel ran at once. "
            "The row under it (not judged) runs the same items as plain `docker run --rm` "
            f"from {parallel} threads: what the engine itself makes of that fan-out here. "
            f"The third row's baseline starts {n_tiny} containers one after another with the "
            f"docker CLI; the row under it runs them {p_tiny} at a time from threads. Item "
            f"containers start together, so on {os.cpu_count()} cores the engine's own work "
            "(create, start, remove) bounds how much --parallel helps: the plain fan-out rows "
            "show that bound on this machine, at this load."
        )

    # -- profile ------------------------------------------------------------------------------

    def profile(self) -> None:
        from profile_run import (
            container_variants,
            profile_build,
            profile_cached_run,
            render,
            render_build,
        )

        texts = []
        image = self.ensure_warm_env()
        n = max(3, 2 * self.n)
        log("profiling a cached run")
        prof = profile_cached_run(
            self.ip, self.magics, f"-r {WARM_REQ}", "print('profile', 6 * 7)", n=n
        )
        variants = container_variants(self.client, image, "print('profile', 6 * 7)", self.ns, n=n)
        self.info["profile"] = {"cached_run": prof, "docker_variants": variants}
        texts.append(render(prof, variants))
        if "data" in self.scenarios and getattr(self, "_big", None) is not None:
            log("profiling the data run (big and tiny array)")
            line = f"--no-capture -r {DATA_REQ} --in a --out b"
            for label, value in (("big", self._big), ("tiny", self._tiny)):
                prof = profile_cached_run(
                    self.ip, self.magics, line, "b = a", n=3, user_ns={"a": value}
                )
                prof["what"] = f" with --in/--out of a {value.nbytes:,}-byte array"
                self.ip.user_ns.pop("b", None)
                self.info["profile"][f"data_{label}"] = prof
                texts.append(render(prof, {}))
        if {"cold", "add"} & set(self.scenarios) and not self.short:
            log("profiling an environment build (cold, then + one package)")
            ns = self.janitor.namespace(f"{self.ns}-prof")
            try:
                prof = profile_build(
                    ns, self.magics.base_image, self.sizes["cold"], self.sizes["add"]
                )
            finally:
                self.janitor.remove_namespace(ns)
            self.info["profile"]["build"] = prof
            texts.append(render_build(prof))
        self.profile_text = "\n\n".join(texts)

    # -- driver -------------------------------------------------------------------------------

    def run(self) -> int:
        wanted = self.args.only or ORDER
        self.info.update(machine_info(self))
        for key in ORDER:
            if key in wanted:
                self.scenarios[key] = Scenario(key, ORDER.index(key) + 1, TITLES[key])
        self.profile_text = ""
        for key, sc in list(self.scenarios.items()):
            if key in ("add", "second") and "cold" in self.scenarios:
                continue  # measured together with scenario 3, which they need
            if key == "second" and "add" in self.scenarios:
                continue  # ... or with scenario 4
            fn = self.s_cold if key in ("add", "second") else getattr(self, f"s_{key}")
            log(f"scenario {sc.number}: {sc.title}")
            t0 = time.perf_counter()
            try:
                fn(sc)
            except KeyboardInterrupt:
                raise
            except Exception as e:
                sc.error = f"{type(e).__name__}: {e}"[:2000]
                traceback.print_exc()
                if key == "cold" and "add" in self.scenarios:
                    self.scenarios["add"].error = f"scenario 3 failed: {sc.error}"[:2000]
            sc.info["wall_s"] = round(time.perf_counter() - t0, 1)
        if self.args.profile if self.args.profile is not None else not self.short:
            try:
                self.profile()
            except Exception as e:
                self.info["profile_error"] = f"{type(e).__name__}: {e}"
                traceback.print_exc()
        return 0

    def result(self) -> dict:
        judge = not self.short
        scen = {k: sc.to_dict(judge) for k, sc in self.scenarios.items()}
        return {
            "mode": "short" if self.short else "full",
            "repeat": self.n,
            "cheap_repeat": self.cheap_n,
            "cold_repeat": self.cold_n,
            "namespace": self.ns,
            "generated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "scenarios": scen,
            "checks_passed": bool(scen) and all(s["checks_passed"] for s in scen.values()),
            "targets_met": None
            if not judge
            else all(s["pass"] for s in scen.values() if s["pass"] is not None),
            "info": self.info,
        }


def most_at_once(spans) -> int:
    """The most intervals [start, end] that overlap at one moment."""
    edges = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    now = most = 0
    for _, step in edges:
        now += step
        most = max(most, now)
    return most


def wave_starts(spans, parallel: int, began: float) -> list[float]:
    """When the last item of each wave had started (its earlier items may have ended by
    then): the first wave's after ``began`` (the cell's start), each later one's after the
    previous wave's first end (the first slot that freed). Items' clocks are the
    containers' (the host's)."""
    starts = sorted(s for s, _ in spans)
    ends = sorted(e for _, e in spans)
    out, ref = [], began
    for w in range(0, len(starts), parallel):
        wave = starts[w : w + parallel]
        out.append(round(wave[-1] - ref, 3))
        ref = ends[w] if w < len(ends) else ref
    return out


def data_breakdown(value, folder: Path) -> dict:
    """What the host side of scenario 7 spends, step by step (median of 3, untimed in the
    table): the product's own transfer functions on the same array, in the folder run folders
    go to; ``folder`` (on the disk of the bench's snapshot store) receives the kept copy."""
    import statistics

    from mlcontainer_magics.core import runs, transfer

    run_folder = Path(tempfile.mkdtemp(prefix="mlc-bench-", dir=runs.run_folder_root()))
    where = f"in {run_folder.parent}"
    steps: dict[str, list] = {
        f"np.save {where} (write_inputs)": [],
        f"digest, {transfer.DIGEST} (file_digest)": [],
        "digest, sha256 (of older snapshots)": [],
        "keep in the store: copy + digest, one pass": [],
        f"np.load {where} (read_value)": [],
    }
    folder.mkdir(parents=True, exist_ok=True)
    try:
        for _ in range(3):
            t0 = time.perf_counter()
            rec = transfer.write_inputs({"a": value}, run_folder, digests=False)
            steps[f"np.save {where} (write_inputs)"].append(time.perf_counter() - t0)
            path = run_folder / Path(rec["a"]["file"]).name
            for algorithm, key in (
                (transfer.DIGEST, f"digest, {transfer.DIGEST} (file_digest)"),
                ("sha256", "digest, sha256 (of older snapshots)"),
            ):
                t0 = time.perf_counter()
                transfer.file_digest(path, algorithm)
                steps[key].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            transfer.copy_digest(path, folder / "kept.npy")
            steps["keep in the store: copy + digest, one pass"].append(time.perf_counter() - t0)
            (folder / "kept.npy").unlink()
            t0 = time.perf_counter()
            transfer.read_value(path, "npy")
            steps[f"np.load {where} (read_value)"].append(time.perf_counter() - t0)
            path.unlink()
    finally:
        shutil.rmtree(run_folder, ignore_errors=True)
        shutil.rmtree(folder, ignore_errors=True)
    return {k: round(statistics.median(v), 4) for k, v in steps.items()}


def ours_metadata(url: str) -> dict:
    """A served cell's GET /metadata (its counters)."""
    import urllib.request

    with urllib.request.urlopen(f"{url}/metadata", timeout=10) as answer:
        return json.loads(answer.read())


def cell_output(stdout: str) -> str:
    """What the cell printed: the magic's own progress lines (text mode, outside a
    widget-capable kernel) start with "[mlcontainer]" and are left out."""
    return "".join(
        line for line in stdout.splitlines(keepends=True) if not line.startswith("[mlcontainer]")
    )


def importtime(py, code, prefix, env) -> float | None:
    """Sum of the cumulative -X importtime of top-level imports whose name starts with prefix."""
    proc = subprocess.run(
        [py, "-X", "importtime", "-c", code], env=env, capture_output=True, text=True
    )
    total = 0
    for line in proc.stderr.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \| (\S.*)$", line)
        if m and m.group(3).startswith(prefix):
            total += int(m.group(2))
    return total / 1e6 if total else None


def importtime_top(py, code, prefix, env, k=8) -> list:
    """The k slowest modules (self time) imported under the top-level prefix imports."""
    proc = subprocess.run(
        [py, "-X", "importtime", "-c", code], env=env, capture_output=True, text=True
    )
    lines = proc.stderr.splitlines()
    out, block = [], []
    for line in lines:
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \| (\s*)(\S.*)$", line)
        if not m:
            continue
        block.append((int(m.group(1)), m.group(4)))
        if not m.group(3):  # a top-level import closes its block
            if m.group(4).startswith(prefix):
                out += block
            block = []
    out.sort(reverse=True)
    return [{"module": name, "self_ms": round(us / 1e3, 1)} for us, name in out[:k]]


def machine_info(bench) -> dict:
    info = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "loadavg_start": os.getloadavg(),
    }
    try:
        v = bench.client.version()
        info["docker_engine"] = v.get("Version")
        info["docker_client"] = subprocess.run(
            ["docker", "version", "-f", "{{.Client.Version}}"], capture_output=True, text=True
        ).stdout.strip()
        base = os.environ.get("MLCONTAINER_BASE_IMAGE") or "python:{}.{}-slim".format(
            *sys.version_info[:2]
        )
        info["base_image"] = base
        info["base_image_id"] = bench.client.images.get(base).id
    except Exception as e:
        info["docker_error"] = str(e)
    return info


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--repeat",
        type=int,
        default=5,
        help="repetitions of the data scenario (default 5); the cheap ones (1, 2, "
        "5, 6, 8) take 4x as many samples, the cold build --cold-repeat",
    )
    p.add_argument(
        "--cold-repeat",
        type=int,
        default=3,
        help="at most this many repetitions of the cold build (default 3)",
    )
    p.add_argument(
        "--short", action="store_true", help="once each, tiny sizes, correctness only (CI)"
    )
    p.add_argument("--json", metavar="PATH", help="write the results here")
    p.add_argument(
        "--only",
        nargs="+",
        metavar="SCENARIO",
        help=f"some of: {' '.join(ORDER)} (or their numbers 1-{len(ORDER)})",
    )
    prof = p.add_mutually_exclusive_group()
    prof.add_argument(
        "--profile",
        dest="profile",
        action="store_true",
        default=None,
        help="profile a cached run (default: on, except with --short)",
    )
    prof.add_argument("--no-profile", dest="profile", action="store_false")
    args = p.parse_args(argv)
    if args.only:
        names = []
        for x in args.only:
            x = ORDER[int(x) - 1] if x.isdigit() and 1 <= int(x) <= len(ORDER) else x
            if x not in ORDER:
                p.error(f"unknown scenario {x!r}; pick from {' '.join(ORDER)}")
            names.append(x)
        args.only = names
    if args.repeat < 1:
        p.error("--repeat must be at least 1")

    bench = Bench(args)
    log(
        f"namespace {bench.ns}, store {bench.store_dir}, "
        f"{'short' if args.short else f'repeat {bench.n}, cold {bench.cold_n}'}"
    )
    interrupted = False
    t0 = time.perf_counter()
    try:
        with interrupts_become_keyboardinterrupt():
            bench.run()
    except KeyboardInterrupt:
        interrupted = True
        log("interrupted: cleaning up")
    finally:
        with no_interrupts():
            log("cleaning up: containers, images and volumes of this run's namespaces")
            if bench._ip is not None:
                pool = getattr(bench.magics.backend, "_sessions", None)
                if pool is not None:
                    pool.stop_all()
            bench.janitor.cleanup(settle=20.0 if interrupted else 0.0)
            left = bench.janitor.leftovers()
            shutil.rmtree(bench.tmp, ignore_errors=True)
            for leftover in Path(tempfile.gettempdir()).glob(f"{bench.ns}-*"):
                shutil.rmtree(
                    leftover, ignore_errors=True
                ) if leftover.is_dir() else leftover.unlink()
    if interrupted:
        print(f"interrupted; leftovers: {left or 'none'}", file=sys.stderr)
        return 130
    res = bench.result()
    res["info"]["loadavg_end"] = os.getloadavg()
    res["info"]["wall_s"] = round(time.perf_counter() - t0, 1)
    res["leftovers"] = left
    res["checks_passed"] = res["checks_passed"] and not left
    judge = not args.short
    print()
    print(
        f"mlcontainer-magics benchmarks ({res['mode']}: repeat {res['repeat']}, cold build "
        f"{res['cold_repeat']}; medians; ratio = median(ours) / median(baseline); paired = "
        f"median of each repetition's own ratio; * = the judged row; "
        f"wall {res['info']['wall_s']:.0f}s)"
    )
    print(table(bench.scenarios, judge))
    print()
    for sc in bench.scenarios.values():
        d = sc.to_dict(judge)
        bad = [k for k, v in d["checks"].items() if not v]
        status = "checks OK" if d["checks_passed"] else f"CHECKS FAILED {bad or d['error']}"
        print(f"{sc.number}. {sc.title}: {status} ({', '.join(d['checks'])})")
        for note in sc.notes:
            print(f"   - {note}")
    if bench.profile_text:
        print()
        print(bench.profile_text)
    print(f"\nleftovers after cleanup: {left or 'none'}")
    text = json.dumps(res, indent=2, default=str)
    if args.json:
        Path(args.json).write_text(text)
        print(f"JSON written to {args.json}")
    else:
        print(text)
    return 0 if res["checks_passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
