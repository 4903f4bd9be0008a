"""Pipelines: the plan of a lineage and the step-by-step diff (pure, over hand-made records), then
re-running whole pipelines on the real engine (rerun --pipeline [--verify], diff --pipeline)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from mlcontainer_magics.core import lineage, pipelines
from mlcontainer_magics.core.backend import RunResult
from mlcontainer_magics.core.runs import RunOutcome
from mlcontainer_magics.core.store import Store
from mlcontainer_magics.errors import BuildError, RunError, StoreError, VerificationFailed
from mlcontainer_magics.frontends.commands import build_parser, run_verb

D = {n: f"xxh3-128:{n * 32}" for n in "abcdefgh"}  # digests
IDS = {n: n * 12 for n in "abcdefgh"}  # snapshot ids a store accepts


def rec(key, created, *, name, inputs=(), parents=(), outputs=(), code="pass", lock=()):
    """A record as a run leaves it: its spec's --in names, their digests, its parents."""
    return {
        "id": IDS[key],
        "name": name,
        "status": "done",
        "created": created,
        "code": code,
        "spec": {"code": code, "inputs": list(inputs)},
        "inputs": {n: {"format": "json", "digest": d} for n, d in inputs.items()}
        if isinstance(inputs, dict)
        else {},
        "outputs": {n: {"format": "json", "digest": D[d], "size": 3} for n, d in outputs},
        "parents": list(parents),
        "lock": [{"name": n, "version": v} for n, v in lock],
        "stdout": "",
    }


def edge(inp, key, output, d):
    return {"input": inp, "snapshot": IDS[key], "output": output, "digest": D[d]}


def nb(inp, d):
    return {"input": inp, "from": "notebook", "digest": D[d]}


def chain(first="a", second="b", third="c", *, code2="lang = 'fr'") -> list[dict]:
    """ocr -> detect -> translate (which takes ocr's text too), notebook values at each end."""
    a, b, c = first, second, third
    return [
        rec(
            a,
            10.0,
            name="ocr",
            inputs={"png": D["e"]},
            parents=[nb("png", "e")],
            outputs=[("text", "b")],
            lock=[("six", "1.16.0")],
        ),
        rec(
            b,
            20.0,
            name="detect",
            inputs={"text": D["b"]},
            parents=[edge("text", a, "text", "b")],
            outputs=[("lang", "c")],
            code=code2,
            lock=[("six", "1.15.0")],
        ),
        rec(
            c,
            30.0,
            name="translate",
            inputs={"text": D["b"], "lang": D["c"], "to": D["f"]},
            parents=[edge("text", a, "text", "b"), edge("lang", b, "lang", "c"), nb("to", "f")],
            outputs=[("english", "d")],
        ),
    ]


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "store")
    yield s
    s.close()


# -- the plan: pure over a store of hand-made records ----------------------------------------


def test_plan_orders_the_steps_and_says_where_each_input_comes_from(store):
    store.put_many(chain())
    pipeline = pipelines.plan(store, "translate")
    assert pipeline.root == IDS["c"]
    assert [(s.number, s.id, s.name) for s in pipeline.steps] == [
        (1, IDS["a"], "ocr"),
        (2, IDS["b"], "detect"),
        (3, IDS["c"], "translate"),
    ]
    assert [s.sources for s in pipeline.steps] == [
        {"png": ("notebook", D["e"])},
        {"text": ("step", 1, "text")},
        {"text": ("step", 1, "text"), "lang": ("step", 2, "lang"), "to": ("notebook", D["f"])},
    ]
    assert pipeline.label(pipeline.steps[1]) == "step 2/3 detect"
    # a step's own pipeline is the part that led to it
    assert [s.name for s in pipelines.plan(store, IDS["b"]).steps] == ["ocr", "detect"]


def test_an_input_with_no_lineage_entry_is_the_notebooks(store):
    """A snapshot recorded before lineage: its recorded input is the notebook's value."""
    old = rec("a", 1.0, name="old", inputs={"x": D["a"]})
    store.put(old)
    [step] = pipelines.plan(store, "old").steps
    assert step.sources == {"x": ("notebook", D["a"])}


def test_a_removed_step_is_a_clear_error(store):
    store.put_many(chain())
    store.remove(IDS["a"])
    with pytest.raises(StoreError) as e:
        pipelines.plan(store, "translate")
    message = str(e.value)
    assert f"Step 1 ({IDS['a']}) of the pipeline that led to {IDS['c']} was removed" in message
    assert f"went to step 2 ({IDS['b']}), step 3 ({IDS['c']})" in message
    assert f"mlcontainer rerun {IDS['c']}" in message


# -- diff: pure ----------------------------------------------------------------------------------


def test_diff_of_two_equal_pipelines_says_every_step_is_the_same(store):
    store.put_many(chain() + chain("f", "g", "h"))
    text = pipelines.diff_pipelines(store, IDS["c"], IDS["h"])
    assert text.splitlines() == [
        f"--- pipeline of {IDS['c']} (3 steps)",
        f"+++ pipeline of {IDS['h']} (3 steps)",
        f"step 1 ocr {IDS['a']} -> {IDS['f']}: same",
        f"step 2 detect {IDS['b']} -> {IDS['g']}: same",
        f"step 3 translate {IDS['c']} -> {IDS['h']}: same",
        "every step is the same (3 steps)",
    ]


def test_diff_names_the_step_that_changed(store):
    store.put_many(chain() + chain("f", "g", "h", code2="lang = 'es'"))
    text = pipelines.diff_pipelines(store, IDS["c"], IDS["h"])
    lines = text.splitlines()
    assert lines[2].endswith(": same") and lines[-2].endswith(": same")
    assert f"step 2 detect {IDS['b']} -> {IDS['g']}: differs" in lines
    assert "    +lang = 'es'" in lines
    assert lines[-1] == "1 of 3 steps differ: 2 detect"


def test_diff_of_pipelines_wired_otherwise_or_of_other_lengths(store):
    """Where an input comes from is part of a step: from a step, or a notebook value."""
    store.put_many(chain())
    alone = rec(
        "h",
        40.0,
        name="translate",
        inputs={"text": D["b"], "lang": D["g"], "to": D["f"]},
        parents=[edge("text", "a", "text", "b"), nb("lang", "g"), nb("to", "f")],
        outputs=[("english", "d")],
    )
    store.put(alone)
    text = pipelines.diff_pipelines(store, IDS["c"], IDS["h"])
    assert f"step 1 ocr {IDS['a']} -> {IDS['a']}: same" in text
    assert f"step 2 detect -> translate {IDS['b']} -> {IDS['h']}: differs" in text
    assert f"  input lang: none -> notebook xxh3-128:{'g' * 12}" in text
    assert f"step 3 translate {IDS['c']}: only in A" in text
    assert text.splitlines()[-1] == "2 of 3 steps differ: 2 translate, 3 translate"


def test_diff_pipeline_through_the_command(store):
    store.put_many(chain() + chain("f", "g", "h"))
    args = build_parser().parse_args(["diff", IDS["c"], IDS["h"], "--pipeline"])
    assert run_verb(args, store=store, backends=None).endswith("every step is the same (3 steps)")
    args = build_parser(for_magic=True).parse_args(["rerun", "x", "--pipeline", "--verify"])
    assert args.pipeline and args.verify


def test_format_rerun_says_each_step_and_the_one_that_stopped_it(store):
    store.put_many(chain())
    pipeline = pipelines.plan(store, "translate")

    def outcome(run_id, reason="done"):
        return RunOutcome(run_id, spec=None, result=RunResult(0, reason))

    rerun = pipelines.PipelineRerun(pipeline, verify=True)
    rerun.steps = [
        (IDS["a"], outcome("111111111111"), []),
        (IDS["b"], outcome("222222222222"), ["output lang differs: recorded x, now y"]),
    ]
    rerun.first_difference = 2
    assert not rerun.ok and rerun.problems == ["output lang differs: recorded x, now y"]
    assert pipelines.format_rerun(rerun).splitlines() == [
        f"step 1/3 ocr {IDS['a']} -> 111111111111: done, verified",
        f"step 2/3 detect {IDS['b']} -> 222222222222: done, NOT reproduced",
        "  - output lang differs: recorded x, now y",
        f"step 3/3 translate {IDS['c']}: not run",
    ]
    assert pipelines.stopped_at(rerun) == f"step 2/3 detect ({IDS['b']})"


# -- on the real engine ---------------------------------------------------------------------


def on_engine(test):
    """A test on the real Docker engine, which must leave nothing behind."""
    return pytest.mark.docker(pytest.mark.usefixtures("no_leaks")(test))


def cell(ip, line, code):
    ip.run_cell_magic("containerize", line, code)


def cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "mlcontainer_magics.frontends.cli", *args],
        capture_output=True,
        text=True,
        env=os.environ.copy(),
        timeout=900,
    )


def reruns_of(store, pipeline) -> list[dict]:
    """The newest re-run of each step of ``pipeline``, in step order."""
    newest = {}
    for summary in store.list(limit=None):  # newest first
        record = store.get(summary["id"])
        newest.setdefault(record.get("rerun_of"), record)
    return [newest[step.id] for step in pipeline.steps]


@on_engine
def test_a_pipeline_of_conflicting_environments_reruns_and_verifies_without_its_images(
    ip, store_of_ip, docker_client, namespace
):
    """Three steps, each its own environment (six 1.16.0, six 1.15.0, idna); every image of
    the chain deleted: rerun --pipeline --verify rebuilds them from their locks and reproduces
    every step. Then step 2's recorded output altered: diff --pipeline and rerun --verify name
    step 2."""
    store = store_of_ip
    ip.user_ns["words"] = ["bonjour", "le", "monde"]
    cell(
        ip,
        "-n ocr -r six==1.16.0 --in words --out text --no-capture",
        "import six\ntext = ' '.join(words)\nprint('ocr six', six.__version__)",
    )
    cell(
        ip,
        "-n detect -r six==1.15.0 --in text --out lang --no-capture",
        "import six\nlang = 'fr' if 'bonjour' in text else '?'\nprint(six.__version__)",
    )
    cell(
        ip,
        "-n translate -r idna==3.5 --in text,lang --out english --no-capture",
        "import idna\nenglish = text.upper() + ' (' + lang + ')'",
    )
    assert ip.user_ns["english"] == "BONJOUR LE MONDE (fr)"
    pipeline = pipelines.plan(store, "translate")
    old = [step.record for step in pipeline.steps]
    assert [r["name"] for r in old] == ["ocr", "detect", "translate"]
    assert [r["stdout"] for r in old[:2]] == ["ocr six 1.16.0\n", "1.15.0\n"]
    for record in old:
        # Each its own environment image, of this test session: never a shared base image.
        image = docker_client.images.get(record["env_image"])
        assert image.labels.get("org.mlcontainer.namespace") == namespace, record["env_image"]
        # And every image of the session that holds the same lock (an earlier test may have
        # rebuilt one from it): a rerun must find none to reuse. Untagged, not removed: one
        # that later environments were built on stays for them, unlisted, out of reach.
        lock_key = image.labels["org.mlcontainer.lock-key"]
        same = docker_client.images.list(
            filters={
                "label": [
                    f"org.mlcontainer.lock-key={lock_key}",
                    f"org.mlcontainer.namespace={namespace}",
                ]
            }
        )
        for tag in {t for i in [image, *same] for t in i.tags}:
            docker_client.images.remove(tag, force=True)

    proc = cli("rerun", "translate", "--pipeline", "--verify")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    new = reruns_of(store, pipeline)
    lines = proc.stdout.splitlines()
    for n, (was, now) in enumerate(zip(old, new), 1):
        started = f"step {n}/3 {was['name']} {was['id']} -> {now['id']}: started"
        assert started in lines  # as it happens
        assert f"step {n}/3 {was['name']} {was['id']} -> {now['id']}: done, verified" in lines
        assert now["pipeline"] == {"of": old[-1]["id"], "step": n, "steps": 3}
        assert now["env_cached"] is False  # rebuilt from its lock
        assert now["lock"] == was["lock"] and now["outputs"] == was["outputs"]
    assert f"step 1/3 ocr {old[0]['id']}: building its environment from the lock" in lines
    assert lines[-1] == "verified: the outputs of all 3 steps match the recorded digests"
    assert "ocr six 1.16.0" in proc.stdout  # what the steps print, as they print it
    # the re-run is a pipeline of its own, step for step the same
    assert [s.id for s in pipelines.plan(store, new[-1]["id"]).steps] == [r["id"] for r in new]
    assert new[2]["parents"][:2] == [
        {
            "input": "text",
            "snapshot": new[0]["id"],
            "output": "text",
            "digest": old[0]["outputs"]["text"]["digest"],
        },
        {
            "input": "lang",
            "snapshot": new[1]["id"],
            "output": "lang",
            "digest": old[1]["outputs"]["lang"]["digest"],
        },
    ]
    diff = cli("diff", old[-1]["id"], new[-1]["id"], "--pipeline")
    assert diff.returncode == 0 and diff.stdout.splitlines()[-1] == (
        "every step is the same (3 steps)"
    )

    # step 2's recorded output altered
    outputs = dict(old[1]["outputs"], lang=dict(old[1]["outputs"]["lang"], digest="xxh3-128:0"))
    store.update(old[1]["id"], outputs=outputs)
    text = run_verb(
        build_parser().parse_args(["diff", old[-1]["id"], new[-1]["id"], "--pipeline"]),
        store=store,
        backends=None,
    )
    assert f"step 2 detect {old[1]['id']} -> {new[1]['id']}: differs" in text
    assert text.splitlines()[-1] == "1 of 3 steps differ: 2 detect"
    count = store.count()
    with pytest.raises(VerificationFailed) as e:
        ip.run_line_magic("container", f"rerun {old[-1]['id']} --pipeline --verify")
    assert f"NOT reproduced: step 2/3 detect ({old[1]['id']}) differs" in str(e.value)
    now = new[1]["outputs"]["lang"]["digest"]
    assert e.value.problems == [f"output lang differs: recorded xxh3-128:0, now {now}"]
    assert f"step 3/3 translate {old[2]['id']}: not run" in str(e.value)
    assert store.count() == count + 2  # step 3 never ran
    proc = cli("rerun", old[-1]["id"], "--pipeline", "--verify")
    assert proc.returncode == 1, proc.stderr
    assert f"NOT reproduced: step 2/3 detect ({old[1]['id']}) differs" in proc.stderr


@on_engine
def test_a_fan_in_reruns_its_parents_first_and_a_failed_step_stops_the_pipeline(
    ip, store_of_ip, capsys
):
    store = store_of_ip
    cell(ip, "-n left --out a", "a = [1, 2]")
    cell(ip, "-n right --out b", "b = {'k': 3}")
    cell(ip, "-n join --in a,b --out c", "c = a + [b['k']]")
    pipeline = pipelines.plan(store, "join")
    left, right, join = (s.record for s in pipeline.steps)
    assert [left["name"], right["name"]] == ["left", "right"]

    backends = ip.magics_manager.registry["ContainerizeMagics"].backends
    rerun = pipelines.rerun_pipeline(store, "join", backends.for_record)
    assert rerun.ok and rerun.first_difference is None
    assert [old for old, _, _ in rerun.steps] == [left["id"], right["id"], join["id"]]
    outcome = rerun.steps[-1][1]
    assert outcome.values == {"c": [1, 2, 3]}
    assert rerun.steps[0][1].values == {}  # let go once join had them
    new_join = store.get(outcome.run_id)
    assert [(p["input"], p["snapshot"]) for p in new_join["parents"]] == [
        ("a", rerun.steps[0][1].run_id),
        ("b", rerun.steps[1][1].run_id),
    ]
    assert lineage.steps(lineage.graph(store, outcome.run_id)) == [
        o.run_id for _, o, _ in rerun.steps
    ]

    # a single rerun, as before: its recorded inputs, no pipeline
    ip.run_line_magic("container", f"rerun {join['id']} --verify")
    single = store.get(store.list(limit=1)[0]["id"])
    assert single["rerun_of"] == join["id"] and "pipeline" not in single
    assert single["outputs"] == join["outputs"]

    # the right step now fails: the pipeline stops there, and says so
    spec = dict(right["spec"], code="raise SystemExit(3)")
    store.update(right["id"], spec=spec)
    count = store.count()
    with pytest.raises(RunError) as e:
        ip.run_line_magic("container", f"rerun {join['id']} --pipeline")
    message = str(e.value)
    assert f"the pipeline stopped at step 2/3 right ({right['id']})" in message
    assert "  - the step failed: The containerized cell failed (exit code 3)." in message
    assert f"step 3/3 join {join['id']}: not run" in message
    assert store.count() == count + 2
    failed = store.get(store.list(limit=1)[0]["id"])
    assert failed["status"] == "failed" and failed["pipeline"]["step"] == 2
    assert failed["rerun_of"] == right["id"]

    # a step whose environment cannot be built: the error names it, and nothing is left
    store.update(left["id"], lock=[{"name": "mlctest-no-such-package", "version": "1.0"}])
    count = store.count()
    with pytest.raises(BuildError, match=rf"^step 1/3 left \({left['id']}\): "):
        ip.run_line_magic("container", f"rerun {join['id']} --pipeline")
    assert store.count() == count
    capsys.readouterr()
