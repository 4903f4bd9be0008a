"""Pipelines: the snapshots whose values led to one (its lineage), re-run and compared as a whole.

A pipeline is the lineage graph of its last snapshot (core.lineage), its steps in the order
they ran. Re-running it runs every step again from its recorded lock (as a single rerun does,
environments rebuilt where images are gone), each step fed the values its re-run parents
return, the notebook's values from the recorded files. The re-run steps are a lineage of
their own: their ``parents`` name the re-run parents, so that the re-run can be shown,
re-run or compared as a pipeline too.

Pure (records in, data out)::

    pipeline_of(graph, records)     the steps and where each input comes from
    format_rerun(rerun, verify)     one line per step
    format_diff(a, b)               step by step

With a store: ``plan``, ``rerun_pipeline``, ``diff_pipelines``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from ..errors import MlcError, SpecError, StoreError
from . import lineage, snapshots
from .events import REASONS, no_events
from .formatting import short_digest
from .runs import RunOutcome, outcome_error

NOTEBOOK = lineage.NOTEBOOK


@dataclass(frozen=True)
class Step:
    """One snapshot of a pipeline. ``sources``: input name -> ("step", number, output name)
    for a value an earlier step produced, or ("notebook", digest) for one the notebook made."""

    number: int
    record: dict
    sources: Mapping[str, tuple]

    @property
    def id(self) -> str:
        return self.record["id"]

    @property
    def name(self) -> str:
        return self.record.get("name") or "-"


@dataclass(frozen=True)
class Pipeline:
    root: str
    steps: tuple[Step, ...]

    def label(self, step: Step) -> str:
        """``step 2/3 detect``: how a step is named to a person."""
        return f"step {step.number}/{len(self.steps)} {step.name}"


# -- the plan --------------------------------------------------------------------------------


def plan(store, ref: str) -> Pipeline:
    """The pipeline that led to the snapshot ``ref`` (an id, prefix or name). A step removed
    from the store since is a StoreError saying which, and what can be done instead."""
    g = lineage.graph(store, ref)
    records = {sid: store.get(sid) for sid, node in g.nodes.items() if not node.get("missing")}
    return pipeline_of(g, records)


def pipeline_of(g: lineage.Graph, records: Mapping[str, dict]) -> Pipeline:
    """The graph's steps in order, with the records and where each input comes from. Pure."""
    order = lineage.steps(g)
    number = {sid: i for i, sid in enumerate(order, 1)}
    gone = [sid for sid in order if sid not in records]
    if gone:
        takers = sorted(
            {e["to"] for e in g.edges if e["from"] == gone[0]}, key=lambda sid: number[sid]
        )
        raise StoreError(
            f"Step {number[gone[0]]} ({gone[0]}) of the pipeline that led to {g.root} was "
            "removed (its values went to "
            + ", ".join(f"step {number[t]} ({t})" for t in takers)
            + "): the pipeline cannot be re-run or exported as a whole. Rerun "
            f"{g.root} alone (mlcontainer rerun {g.root}: it takes its recorded inputs), or "
            "run the notebook's cells again to record the pipeline."
        )
    return Pipeline(
        g.root,
        tuple(Step(number[sid], records[sid], _sources(records[sid], number)) for sid in order),
    )


def _sources(record: Mapping, number: Mapping[str, int]) -> dict[str, tuple]:
    """Per input of the record (in the order of its --in): the step or notebook it came from.
    An input with no lineage entry (a snapshot older than lineage) is the notebook's."""
    parents = {p.get("input"): p for p in record.get("parents") or () if isinstance(p, Mapping)}
    recorded = record.get("inputs") or {}
    names = list((record.get("spec") or {}).get("inputs") or ())
    names += [n for n in recorded if n not in names]
    sources: dict[str, tuple] = {}
    for name in names:
        p = parents.get(name) or {}
        if p.get("snapshot") in number:
            sources[name] = ("step", number[p["snapshot"]], p.get("output"))
        else:
            digest = p.get("digest") or (recorded.get(name) or {}).get("digest")
            sources[name] = (NOTEBOOK, digest)
    return sources


# -- re-running it ---------------------------------------------------------------------------


@dataclass
class PipelineRerun:
    """What re-running a pipeline did. ``steps``: (old id, outcome, problems) of each step
    that ran, in order; ``first_difference``: the number of the step that stopped it (it
    failed, or with verify its outputs differ), or None."""

    pipeline: Pipeline
    steps: list[tuple[str, RunOutcome, list[str]]] = field(default_factory=list)
    first_difference: int | None = None
    verify: bool = False

    @property
    def ok(self) -> bool:
        return self.first_difference is None and len(self.steps) == len(self.pipeline.steps)

    @property
    def problems(self) -> list[str]:
        return self.steps[-1][2] if self.first_difference is not None else []


def rerun_pipeline(
    store,
    ref: str,
    backend_of: Callable[[dict], object],
    *,
    verify: bool = False,
    events=no_events,
    output=None,
    secrets_file: str | None = None,
) -> PipelineRerun:
    """Run every step that led to ``ref`` again, in order, each from its recorded lock on
    ``backend_of(record)``, fed the values its re-run parents returned. Each new snapshot
    records ``rerun_of`` and ``pipeline: {"of", "step", "steps"}``. A step that fails, or
    with ``verify`` one whose outputs or stdout differ from its record, stops the pipeline.

    ``events`` hears every step's phases with ``step``, ``steps``, ``step_name`` and
    ``rerun_of`` (the step's old id) added; an error that stops a step before it ran (a
    failed build) names the step. A step's values are let go once the steps that take them
    have run: only the last step's outcome keeps its values."""
    pipeline = plan(store, ref)
    last = pipeline.steps[-1]
    if last.record.get("service") or (last.record.get("spec") or {}).get("serve"):
        raise SpecError(
            f"Snapshot {last.id} is a served cell, not a run: serve it again with "
            f"`mlcontainer serve {last.id}`, or re-run the pipeline of the step before it."
        )
    count = len(pipeline.steps)
    rerun = PipelineRerun(pipeline, verify=verify)
    outcomes: dict[int, RunOutcome] = {}
    last_use = _last_use(pipeline)
    for step in pipeline.steps:
        tags = dict(step=step.number, steps=count, step_name=step.name, rerun_of=step.id)
        try:
            outcome, problems = snapshots.rerun_record(
                store,
                step.record,
                backend_of(step.record),
                inputs=_inputs(store, step, outcomes),
                verify=verify,
                events=_tagged(events, **tags),
                output=output,
                secrets_file=secrets_file,
                fields={"pipeline": {"of": pipeline.root, "step": step.number, "steps": count}},
            )
        except MlcError as e:
            # A step that never ran (its build failed, a secret is missing): the error says
            # which, keeping its class and payload (a build's log).
            if e.args and isinstance(e.args[0], str):
                e.args = (f"{pipeline.label(step)} ({step.id}): {e.args[0]}", *e.args[1:])
            raise
        outcomes[step.number] = outcome
        store.update(outcome.run_id, parents=_new_parents(step, outcome, outcomes))
        error = outcome_error(outcome)
        if error is not None:
            # Its outputs are missing, so comparing them would say nothing more.
            reason = outcome.result.reason
            status = "failed" if reason == "done" else REASONS.get(reason, reason)  # an --out
            problems = [f"the step {status}: {str(error).splitlines()[0]}"]
        elif not verify:
            problems = []
        rerun.steps.append((step.id, outcome, problems))
        if problems:
            rerun.first_difference = step.number
            break
        for number, used_last in last_use.items():
            if used_last == step.number and number != last.number:
                outcomes[number].values = {}
    return rerun


def _tagged(events, **tags):
    def tagged(phase, **info):
        events(phase, **dict(info, **tags))

    return tagged


def _last_use(pipeline: Pipeline) -> dict[int, int]:
    """Step number -> the last step that takes its values."""
    last: dict[int, int] = {}
    for step in pipeline.steps:
        for source in step.sources.values():
            if source[0] == "step":
                last[source[1]] = step.number
    return last


def _inputs(store, step: Step, outcomes: Mapping[int, RunOutcome]) -> dict:
    """The step's inputs: its re-run parents' values, the notebook's from its kept files."""
    from_notebook = [name for name, s in step.sources.items() if s[0] == NOTEBOOK]
    values = snapshots.recorded_inputs(store, step.record, names=from_notebook)
    for name, source in step.sources.items():
        if source[0] != "step":
            continue
        _, number, output = source
        returned = outcomes[number].values
        if output not in returned:  # a parent that did not fail returns all its --out values
            raise StoreError(
                f"Step {number} returned no value {output!r}, which step {step.number} "
                f"({step.name}, {step.id}) takes as {name!r}; rerun the pipeline again."
            )
        values[name] = returned[output]
    return values


def _new_parents(step: Step, outcome: RunOutcome, outcomes: Mapping[int, RunOutcome]) -> list:
    """The re-run step's ``parents``: the re-run parents, by the digests it received."""
    parents = []
    for name, source in step.sources.items():
        digest = (outcome.inputs.get(name) or {}).get("digest")
        if source[0] == "step":
            snapshot = outcomes[source[1]].run_id
            parents.append(
                {"input": name, "snapshot": snapshot, "output": source[2], "digest": digest}
            )
        else:
            parents.append({"input": name, "from": NOTEBOOK, "digest": digest})
    return parents


def format_rerun(rerun: PipelineRerun) -> str:
    """One line per step (``step 2/3 detect abc123 -> def456: done, verified``), the problems
    of the step that stopped it, and the steps not run. Pure."""
    pipeline, lines = rerun.pipeline, []
    ran = {old: (outcome, problems) for old, outcome, problems in rerun.steps}
    for step in pipeline.steps:
        head = f"{pipeline.label(step)} {step.id}"
        if step.id not in ran:
            lines.append(f"{head}: not run")
            continue
        outcome, problems = ran[step.id]
        status = REASONS.get(outcome.reason, outcome.reason)
        if problems:
            lines.append(f"{head} -> {outcome.run_id}: {status}, NOT reproduced")
            lines += [f"  - {p}".replace("\n", "\n    ") for p in problems]
        else:
            verified = ", verified" if rerun.verify else ""
            lines.append(f"{head} -> {outcome.run_id}: {status}{verified}")
    return "\n".join(lines)


def stopped_at(rerun: PipelineRerun) -> str:
    """``step 2/3 detect (abc123)``: the step that stopped the pipeline."""
    assert rerun.first_difference is not None, "asked only of a rerun that stopped"
    step = rerun.pipeline.steps[rerun.first_difference - 1]
    return f"{rerun.pipeline.label(step)} ({step.id})"


# -- comparing two -----------------------------------------------------------------------------


def diff_pipelines(store, a: str, b: str) -> str:
    """Two pipelines compared step by step (steps aligned by position)."""
    return format_diff(plan(store, a), plan(store, b))


def format_diff(a: Pipeline, b: Pipeline) -> str:
    """Per step position: "same", or what changed (snapshots.differences, and where its
    inputs come from); a step only one pipeline has; then a summary line. Pure."""
    out = [
        f"--- pipeline of {a.root} ({len(a.steps)} steps)",
        f"+++ pipeline of {b.root} ({len(b.steps)} steps)",
    ]
    changed = []
    for i in range(max(len(a.steps), len(b.steps))):
        sa = a.steps[i] if i < len(a.steps) else None
        sb = b.steps[i] if i < len(b.steps) else None
        if sa is None or sb is None:
            only, which = (sb, "B") if sa is None else (sa, "A")
            assert only is not None, "i is below the longer one's length"
            out.append(f"step {i + 1} {only.name} {only.id}: only in {which}")
            changed.append(f"{i + 1} {only.name}")
            continue
        lines = _source_lines(a, sa, b, sb) + snapshots.differences(sa.record, sb.record)
        names = sa.name if sa.name == sb.name else f"{sa.name} -> {sb.name}"
        head = f"step {i + 1} {names} {sa.id} -> {sb.id}"
        if not lines:
            out.append(f"{head}: same")
            continue
        changed.append(f"{i + 1} {sb.name}")
        out.append(f"{head}: differs")
        out += ["  " + line.replace("\n", "\n  ") for line in lines]
    if changed:
        out.append(
            f"{len(changed)} of {max(len(a.steps), len(b.steps))} steps differ: "
            + ", ".join(changed)
        )
    else:
        out.append(f"every step is the same ({len(a.steps)} steps)")
    return "\n".join(out)


def _source_lines(a: Pipeline, sa: Step, b: Pipeline, sb: Step) -> list[str]:
    """Inputs that come from elsewhere (another step, output or notebook value)."""
    lines = []
    for name in list(sa.sources) + [n for n in sb.sources if n not in sa.sources]:
        was, now = sa.sources.get(name), sb.sources.get(name)
        if was != now:
            lines.append(f"input {name}: {_source(a, was)} -> {_source(b, now)}")
    return lines


def _source(pipeline: Pipeline, source: tuple | None) -> str:
    if source is None:
        return "none"
    if source[0] == "step":
        step = pipeline.steps[source[1] - 1]
        return f"step {source[1]} {step.name}: {source[2]}"
    return f"notebook {short_digest(source[1])}"
