"""Where the time of a cached %%containerize run goes (used by bench/run.py; not a test).

Two views:

* ``profile_cached_run``: the magic with perf_counter wrappers around its phases (spec,
  snapshot store writes, environment lookup, work folder, container run) and around every
  Docker Engine API request the SDK sends (``APIClient.send``: time to the response headers;
  a streamed attach is timed to its headers, the stream itself shows up as the gap before
  ``wait``). Medians over n runs, plus the timeline of one run.
* ``container_variants``: the same trivial cell as plain ``docker run`` variants, to split the
  gap to the baseline into: the container options the product uses (--init, --cap-drop ALL,
  bind mounts, user 1000), its runner program, the SDK's call pattern, and the rest.
"""

from __future__ import annotations

import functools
import re
import shutil
import statistics
import time
import types
from contextlib import ExitStack, contextmanager

from harness import NS_LABEL, docker

_ID = re.compile(r"/[0-9a-f]{12,64}(?=/|$)")


def _path(url: str) -> str:
    path = url.split("://", 1)[-1]
    path = path[path.find("/") :] if "/" in path else path
    path = path.split("?", 1)[0]
    path = re.sub(r"^/v[0-9.]+", "", path)
    path = _ID.sub("/{id}", path)
    return re.sub(r"/images/[^/]+/json", "/images/{ref}/json", path)


@contextmanager
def _patched(obj, name, label, log, t_origin):
    orig = getattr(obj, name)

    @functools.wraps(orig)
    def wrapper(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return orig(*args, **kwargs)
        finally:
            t1 = time.perf_counter()
            log.append((label, t0 - t_origin[0], t1 - t0))

    setattr(obj, name, wrapper)
    try:
        yield
    finally:
        if isinstance(obj, types.ModuleType) or name not in getattr(obj, "__dict__", {}):
            setattr(obj, name, orig)
        else:
            try:
                delattr(obj, name)  # an instance attribute we put there: the class's again
            except AttributeError:
                setattr(obj, name, orig)


def profile_cached_run(
    ip, magics, line: str, code: str, n: int = 5, user_ns: dict | None = None
) -> dict:
    from IPython.utils.capture import capture_output

    from mlcontainer_magics.core import runs, transfer

    backend, store = magics.backend, magics.store
    api = backend.client.api
    phases: list[list] = []
    calls: list[list] = []
    totals: list[float] = []
    timeline = None
    for i in range(n + 1):  # the first is a warm-up
        log: list = []
        api_log: list = []
        t_origin = [0.0]
        with ExitStack() as stack:
            for obj, name, label in [
                (magics, "_spec", "parse options + spec (incl. capture_pins)"),
                (transfer, "check_inputs", "check --in values"),
                (runs, "record_start", "build start record (host/tool versions)"),
                (store, "new_id", "store.new_id"),
                (store, "put", "store.put (start record)"),
                (store, "update", "store.update (x2: environment, end)"),
                (backend, "ensure_environment", "ensure_environment (cached lookup)"),
                (runs, "prepare_workdir", "prepare work folder (runner, cell, manifest)"),
                (runs, "keep_inputs", "keep code/manifest with the snapshot"),
                (backend, "run", "backend.run (create..remove)"),
                (runs, "record_end", "build end record"),
                # nested in the phases above (a leading space marks them)
                (transfer, "write_inputs", "  write --in values (np.save)"),
                (transfer, "read_outputs", "collect --out values (np.load + digest)"),
                (runs, "keep_outputs", "keep small outputs with the snapshot"),
            ]:
                stack.enter_context(_patched(obj, name, label, log, t_origin))
            orig_send = api.send

            def send(request, *a, **kw):
                t0 = time.perf_counter()
                try:
                    return orig_send(request, *a, **kw)
                finally:
                    api_log.append(
                        (
                            f"{request.method} {_path(request.url)}",
                            t0 - t_origin[0],
                            time.perf_counter() - t0,
                        )
                    )

            api.send = send
            stack.callback(lambda: api.__dict__.pop("send", None))
            ip.user_ns.update(user_ns or {})
            with capture_output():
                t_origin[0] = time.perf_counter()
                ip.run_cell_magic("containerize", line, code)
                total = time.perf_counter() - t_origin[0]
        if backend.standbys is not None:  # the next standby, ready before the next run
            backend.standbys.settle()
        if i == 0:
            continue
        totals.append(total)
        phases.append(log)
        calls.append(api_log)
        if timeline is None:
            timeline = sorted(
                log + [("  api " + k, s, d) for k, s, d in api_log], key=lambda x: x[1]
            )

    def medians(logs):
        per: dict[str, list] = {}
        for log in logs:
            sums: dict[str, float] = {}
            counts: dict[str, int] = {}
            for label, _, dur in log:
                sums[label] = sums.get(label, 0.0) + dur
                counts[label] = counts.get(label, 0) + 1
            for label, s in sums.items():
                per.setdefault(label, []).append((s, counts[label]))
        return {
            label: {
                "median_s": statistics.median(s for s, _ in v),
                "calls_per_run": statistics.median(c for _, c in v),
            }
            for label, v in per.items()
        }

    phase_m = medians(phases)
    total_m = statistics.median(totals)
    store_prefix = ("store.", "build ")
    store_s = statistics.median(
        sum(d for label, _, d in log if label.startswith(store_prefix)) for log in phases
    )
    # phases never nest (the API calls, which nest in them, are kept apart): the rest of
    # each run is the magic's own glue, IPython and output
    rest = statistics.median(
        t - sum(d for label, _, d in log if not label.startswith(" "))
        for t, log in zip(totals, phases)
    )
    return {
        "runs": n,
        "total_median_s": total_m,
        "phases": phase_m,
        "api_calls": medians(calls),
        "api_calls_per_run": statistics.median(len(c) for c in calls),
        "store_and_records_s": store_s,
        "unaccounted_s": rest,
        "timeline_one_run": [
            {"what": w, "at_ms": round(s * 1e3, 2), "ms": round(d * 1e3, 2)}
            for w, s, d in timeline or []
        ],
    }


def container_variants(client, image: str, code: str, namespace: str, n: int = 5) -> dict:
    """Medians of the same trivial cell as plain docker CLI / SDK variants."""
    import tempfile
    from pathlib import Path
    from types import SimpleNamespace

    from mlcontainer_magics.core import runs

    label = f"{NS_LABEL}={namespace}"
    workdir, _ = runs.prepare_workdir(
        SimpleNamespace(code=code, outputs=()), {}, Path(tempfile.gettempdir())
    )
    opts = [
        "--user",
        "1000:1000",
        "-e",
        "PYTHONUNBUFFERED=1",
        "-e",
        "HOME=/tmp",
        "-e",
        "MPLBACKEND=Agg",
        "-e",
        "PYTHONDONTWRITEBYTECODE=1",
        "-w",
        "/mlc",
        "--label",
        label,
        "--network",
        "bridge",
        "--cap-drop",
        "ALL",
        "--security-opt",
        "no-new-privileges",
        "--init",
        "--pids-limit",
        "4096",
        "-v",
        f"{workdir}:/mlc:ro",
        "-v",
        f"{workdir}/out:/mlc/out:rw",
    ]

    def sdk_plain():
        # The product's call pattern (create, attach, start, stream, wait, reload, remove),
        # with no options and `python -c`: what the SDK path costs over the CLI.
        t0 = time.perf_counter()
        c = client.containers.create(image, ["python", "-c", code], labels={NS_LABEL: namespace})
        stream = client.api.attach(c.id, stream=True, logs=True, demux=True)
        c.start()
        for _ in stream:
            pass
        c.wait()
        c.reload()
        c.remove(force=True)
        return time.perf_counter() - t0

    variants = {
        "docker run --rm IMAGE python -c CODE (the baseline)": lambda: docker(
            "run", "--rm", "--label", label, image, "python", "-c", code
        )[0],
        "  + the product's container options (python -c CODE)": lambda: docker(
            "run", "--rm", *opts, image, "python", "-c", code
        )[0],
        "  + options + runner.py (the product's container, via CLI)": lambda: docker(
            "run", "--rm", *opts, image, "python", "/mlc/runner.py"
        )[0],
        "SDK create/attach/start/wait/reload/remove, no options, python -c": sdk_plain,
    }
    samples = {k: [] for k in variants}
    try:
        for fn in variants.values():
            fn()  # warm-up
        for i in range(n):
            keys = list(variants)
            keys = keys[i % len(keys) :] + keys[: i % len(keys)]  # rotate the order
            for k in keys:
                samples[k].append(variants[k]())
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return {
        k: {"median_s": statistics.median(v), "samples": [round(x, 4) for x in v]}
        for k, v in samples.items()
    }


def render(profile: dict, variants: dict) -> str:
    out = [
        f"Profile of a cached run{profile.get('what', '')} (median of {profile['runs']}): total "
        f"{profile['total_median_s'] * 1e3:.0f} ms, {profile['api_calls_per_run']:.0f} "
        f"Docker API requests"
    ]
    for k, v in sorted(profile["phases"].items(), key=lambda kv: -kv[1]["median_s"]):
        out.append(
            f"  {v['median_s'] * 1e3:8.1f} ms  {k}"
            + (f"  (x{v['calls_per_run']:g})" if v["calls_per_run"] > 1 else "")
        )
    out.append(f"  {profile['unaccounted_s'] * 1e3:8.1f} ms  rest (IPython, output, glue)")
    out.append("  Docker API requests (time to response headers):")
    for k, v in sorted(profile["api_calls"].items(), key=lambda kv: -kv[1]["median_s"]):
        out.append(
            f"  {v['median_s'] * 1e3:8.1f} ms  {k}"
            + (f"  (x{v['calls_per_run']:g})" if v["calls_per_run"] > 1 else "")
        )
    out.append("  Timeline of one run (start offset, duration):")
    for e in profile["timeline_one_run"]:
        out.append(f"  {e['at_ms']:8.1f} +{e['ms']:7.1f} ms  {e['what']}")
    if variants:
        out.append("Plain docker variants of the same cell (median):")
        for k, v in variants.items():
            out.append(f"  {v['median_s'] * 1e3:8.1f} ms  {k}")
    return "\n".join(out)


def profile_build(namespace: str, base_image: str, requirements: list, added: str) -> dict:
    """Where an environment build's time goes: a cold build, then + ``added`` in the same
    namespace (so with the same pip cache volume). Build-log lines and Docker API requests,
    each with its time since the build began; the pip cache volume's size after each."""
    from mlcontainer_magics.backends.docker.backend import DockerBackend
    from mlcontainer_magics.core.spec import EnvSpec

    backend = DockerBackend(namespace=namespace)
    api = backend.client.api
    out = {}
    for label, reqs in (("cold", list(requirements)), ("add", list(requirements) + [added])):
        events: list = []
        t_origin = time.perf_counter()
        orig_send = api.send

        def send(request, *a, **kw):
            t0 = time.perf_counter()
            try:
                return orig_send(request, *a, **kw)
            finally:
                events.append(
                    (
                        t0 - t_origin,
                        time.perf_counter() - t0,
                        f"api {request.method} {_path(request.url)}",
                    )
                )

        def on_event(phase, **info):
            now = time.perf_counter() - t_origin
            if phase == "build-log":
                events.append((now, 0.0, "log " + info.get("line", "")[:160]))
            else:
                events.append((now, 0.0, f"event {phase}"))

        api.send = send
        try:
            env = backend.ensure_environment(EnvSpec(base_image, (), tuple(reqs)), events=on_event)
        finally:
            api.__dict__.pop("send", None)
        total = time.perf_counter() - t_origin
        _, proc = docker(
            "run",
            "--rm",
            "--label",
            f"{NS_LABEL}={namespace}",
            "-v",
            f"{backend.cache_volume}:/c:ro",
            base_image,
            "du",
            "-sk",
            "/c",
        )
        out[label] = {
            "total_s": round(total, 3),
            "image_size": env.size,
            "cache_volume_kb": int(proc.stdout.split()[0]) if proc.stdout else None,
            "slow_api": [
                {"at_s": round(s, 3), "s": round(d, 3), "what": w}
                for s, d, w in events
                if w.startswith("api") and d > 0.05
            ],
            "milestones": _milestones(events),
        }
    return out


def _milestones(events) -> list:
    """The build log reduced to when each pip phase began, plus the slow API calls."""
    keep = (
        "--- pip",
        "Collecting",
        "Downloading",
        "Using cached",
        "Installing collected",
        "Successfully installed",
        "event",
    )
    rows = []
    for at, dur, what in sorted(events):
        if (
            what.startswith("log ")
            and any(k in what for k in keep)
            or what.startswith("event")
            or (what.startswith("api") and dur > 0.05)
        ):
            rows.append({"at_s": round(at, 3), "s": round(dur, 3), "what": what[:140]})
    return rows


def render_build(prof: dict) -> str:
    out = ["Profile of an environment build (cold, then + one package, same cache volume):"]
    for label, p in prof.items():
        out.append(
            f"  {label}: {p['total_s']:.1f} s, image {p['image_size'] or 0:,} bytes, "
            f"pip cache volume afterwards {p['cache_volume_kb']} kB"
        )
        for m in p["milestones"]:
            out.append(
                f"    {m['at_s']:7.2f} s"
                + (f" +{m['s']:.2f} s" if m["s"] else "")
                + f"  {m['what']}"
            )
    return "\n".join(out)
