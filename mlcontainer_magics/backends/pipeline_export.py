"""`mlcontainer export ID DIR --pipeline`: every step that led to a snapshot, as artifacts that
run the whole chain with plain Docker (``run.sh``) or on a cluster (``--k8s``: ``pipeline.yaml``).

The steps and where each input comes from are the lineage's (core/lineage.py): an input a
parent step returned is taken from that step's out folder, one the notebook made travels in
``inputs/``. Each step's folder is a single export's build context (backends/export.py: the
locked wheels, an offline plain ``docker build``) without values of its own: at run time its
values folder is mounted over the runner's ``/mlc/in`` and ``/mlc/out``. Layout::

    DIR/README.md, DIR/run.sh, DIR/pipeline.json
    DIR/steps/NN-NAME/      one build context per step, in run order
    DIR/inputs/NN-NAME/     the values the notebook gave that step, as recorded
    DIR/values/NN-NAME/     made by run.sh: in/ (what the step reads), out/ (what it returns)
    DIR/pipeline.yaml       with --k8s

Everything is checked before anything is written (a removed step, a record without its spec,
a value not kept); the folder is written beside DIR and renamed once complete.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from ..config import KubernetesConfig
from ..core import pipelines
from ..core.backend import Backend
from ..core.spec import RunSpec
from ..errors import SpecError, StoreError
from ..runner import MLC_DIR, OUT_DIR
from ..runner.mlc_runner import EXT
from .export import (
    _write_build_context,
    _write_run_folder,
    check_dest,
    docker_run_options,
    export_spec,
    write_staged,
)
from .kubernetes.pipeline import k8s_readme, k8s_repository, write_pipeline_manifest

RUN_SCRIPT = "run.sh"
IMAGE_ENV = "MLC_PIPELINE_IMAGE"  # run.sh: the repository its images are tagged in
IN_DIR = f"{MLC_DIR}/in"
# What run.sh and pipeline.yaml may write unquoted: step folders and value file names.
_PLAIN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")

STEP_README = """# Step of a pipeline: snapshot {id}{name}

One step of a pipeline exported by mlcontainer-magics (`../../run.sh` runs them all). It is a
single export's build context, without values of its own: the pipeline mounts a folder with the
values this step reads as `/mlc/in` and one for those it returns as `/mlc/out`.

    docker build -t step .
    docker run --rm -v "$PWD/in:/mlc/in:ro" -v "$PWD/out:/mlc/out" step

- `Dockerfile` starts from `{base}` (image id `{base_id}` when recorded), installs the Debian
  packages and the exact pins of `requirements.lock` (with hashes) from `wheels/`, offline.
- `mlc/cell.py` is the cell's code; `mlc/manifest.json` names the files it reads from
  `/mlc/in` and the values it writes to `/mlc/out`; `mlc/runner.py` runs it as a notebook
  would (standard library only). The image runs as uid 1000: `out/` must be writable by it.
- Recorded stdout: `expected-stdout.txt`.
{data}{secrets}"""


@dataclass(frozen=True)
class Source:
    """Where a step's input comes from: the notebook (``path`` under DIR/inputs/), or the out
    folder of an earlier step (``step``: its folder name, ``path``: the file it writes)."""

    kind: str  # "notebook" | "step"
    path: str
    step: str | None = None


@dataclass(frozen=True)
class ExportStep:
    number: int
    folder: str  # NN-NAME: under steps/, inputs/, values/; the image's tag
    record: dict
    spec: RunSpec
    inputs: tuple[tuple[str, str, Source], ...]  # (input name, file under /mlc/in, source)

    def output_files(self) -> dict[str, str]:
        """--out name -> the file it writes to /mlc/out, of the values it returned."""
        recorded = self.record.get("outputs") or {}
        return {
            n: output_file(n, recorded[n]["format"])
            for n in self.spec.outputs
            if (recorded.get(n) or {}).get("format") in EXT
        }


def output_file(name: str, fmt: str) -> str:
    """The file the runner writes --out ``name`` to, in format ``fmt`` (runner write_outputs)."""
    return f"v-{name}.{EXT[fmt]}"


def slug(text: str, limit: int = 40) -> str:
    """Lowercase letters, digits and '-': a folder name, an image tag and a DNS label alike."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit].strip("-")


# -- the plan: checked before anything is written -------------------------------------------


def plan(store, ref: str) -> tuple[str, list[ExportStep]]:
    """(root id, its steps in run order), each input's source resolved: the pipeline's
    (core.pipelines.plan) with the files the export writes and reads. SpecError (or
    StoreError) naming the step and what to do for what cannot be exported."""
    pipeline = pipelines.plan(store, ref)
    width = max(2, len(str(len(pipeline.steps))))
    folders = {
        s.number: f"{s.number:0{width}d}-{slug(s.record.get('name') or '') or 'step'}"
        for s in pipeline.steps
    }
    records = {s.number: s.record for s in pipeline.steps}
    steps = []
    for step in pipeline.steps:
        record, sid = step.record, step.id
        try:
            spec = export_spec(record)
        except StoreError as e:  # a record without its spec: say which step it is
            raise StoreError(
                f"Step {step.number} of the pipeline of {pipeline.root}: {e}"
            ) from None
        recorded = record.get("inputs") or {}
        inputs = []
        for name, source in step.sources.items():
            if name not in recorded:
                continue  # never written (the run failed first): nothing to pass
            file = str(recorded[name].get("file") or "")
            inside = file.removeprefix("in/")
            if not file.startswith("in/") or not _PLAIN.match(inside):
                raise SpecError(
                    f"Step {step.number} ({sid}): its input {name} was kept as {file!r}, not "
                    "a file of in/; this snapshot cannot be exported as a pipeline step."
                )
            if source[0] == pipelines.NOTEBOOK:
                kept = store.artifacts_dir(sid) / file
                if not kept.is_file():
                    raise SpecError(
                        f"Step {step.number} ({sid}): the value of its input {name} that came "
                        f"from the notebook is not kept ({kept} is missing). Run its cell "
                        "again and export the pipeline of the new run."
                    )
                where = Source("notebook", f"{folders[step.number]}/{inside}")
            else:
                _, parent, output = source
                made = (records[parent].get("outputs") or {}).get(output) or {}
                if made.get("format") not in EXT:
                    raise SpecError(
                        f"Step {parent} ({records[parent]['id']}) recorded no output "
                        f"{output}, which step {step.number} ({sid}) took as {name}."
                    )
                where = Source("step", output_file(output, made["format"]), folders[parent])
            inputs.append((name, inside, where))
        steps.append(ExportStep(step.number, folders[step.number], record, spec, tuple(inputs)))
    return pipeline.root, steps


# -- export -----------------------------------------------------------------------------------


def export_pipeline(
    store,
    ref: str,
    dest,
    backend: Backend,
    *,
    k8s: bool = False,
    k8s_config: KubernetesConfig | None = None,
    data_limit: int = 100 * 2**20,
) -> Path:
    """Write DIR: every step that led to snapshot ``ref`` as a build context, the notebook's
    values, ``run.sh`` (plain ``docker build``/``docker run``, in order, values through
    ``DIR/values/``) and a README; with ``k8s``, ``pipeline.yaml`` (one Job, the steps as
    init containers and its container). ``data_limit`` as for a single export, per step."""
    root, steps = plan(store, ref)
    dest = check_dest(dest)
    config = k8s_config or KubernetesConfig()
    k8s_images = k8s_repository(image_repository(root), config)

    def write(staging: Path) -> None:
        listed = {}
        for step in steps:
            sid = step.record["id"]
            context = staging / "steps" / step.folder
            kept = store.artifacts_dir(sid)
            _write_run_folder(
                context / "mlc", step.record, step.spec, kept, values=False, host=_host(kept)
            )
            listed[step.folder] = _write_build_context(
                context, step.record, step.spec, backend, data_limit, None, readme=STEP_README
            )
            for _name, inside, source in step.inputs:
                if source.kind == "notebook":
                    target = staging / "inputs" / source.path
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(kept / "in" / inside, target)
        script = staging / RUN_SCRIPT
        script.write_text(run_script(root, steps, listed))
        script.chmod(0o755)
        (staging / "pipeline.json").write_text(json.dumps(describe(root, steps), indent=2))
        if k8s:
            write_pipeline_manifest(root, steps, staging, config, k8s_images)
        (staging / "README.md").write_text(readme(root, steps, k8s_images if k8s else None))

    return write_staged(dest, write)


def _host(kept: Path) -> dict | None:
    """What the kernel said it reads, as the run's manifest recorded it: the step writes its
    --out values in the same formats as when it ran (an array as .npy, not refused)."""
    try:
        host = json.loads((kept / "manifest.json").read_text()).get("host")
    except (OSError, ValueError, AttributeError):
        return None
    return host if isinstance(host, dict) else None


def describe(root: str, steps: list[ExportStep]) -> dict:
    """pipeline.json: the steps in order, each input's source and each output's file."""
    return {
        "snapshot": root,
        "steps": [
            {
                "step": s.number,
                "folder": s.folder,
                "snapshot": s.record["id"],
                "name": s.record.get("name"),
                "inputs": {
                    name: {
                        "file": f"in/{inside}",
                        "from": "notebook" if src.kind == "notebook" else src.step,
                        "takes": f"inputs/{src.path}"
                        if src.kind == "notebook"
                        else f"values/{src.step}/out/{src.path}",
                    }
                    for name, inside, src in s.inputs
                },
                "outputs": {
                    name: {"file": f"out/{file}", "digest": s.record["outputs"][name].get("digest")}
                    for name, file in s.output_files().items()
                },
            }
            for s in steps
        ],
    }


# -- run.sh (pure) ----------------------------------------------------------------------------


def image_repository(root: str) -> str:
    """The repository run.sh tags the step images in by default (step N: REPO:NN-NAME)."""
    return f"mlc-pipeline-{slug(root, 60) or 'x'}"


def run_script(root: str, steps: list[ExportStep], listed: dict | None = None) -> str:
    """run.sh: build every step's image, then run the steps in order, each with its values
    folder as /mlc/in (read-only) and /mlc/out. ``listed``: per step folder, the mounted
    inputs too large to copy, mounted from where they were."""
    listed = listed or {}
    for s in steps:
        names = [s.folder] + [i for _, i, _ in s.inputs] + [x.path for *_, x in s.inputs]
        bad = [n for n in names if not all(_PLAIN.match(part) for part in n.split("/"))]
        assert not bad, f"not plain names: {bad}"  # plan() made them
    last = steps[-1]
    name = last.record.get("name")
    lines = [
        "#!/bin/sh",
        f"# The pipeline that led to snapshot {root}{f' ({name})' if name else ''}: "
        f"{len(steps)} step{'s' * (len(steps) != 1)},",
        "# exported by mlcontainer-magics. Docker alone runs it, from any folder:",
        "#   sh run.sh          build every step's image, then run the steps in order",
        "#   sh run.sh build    only build the images",
        "#   sh run.sh push     build them and push them (set MLC_PIPELINE_IMAGE to a registry's)",
        f"# {IMAGE_ENV} names the images' repository; step NN-NAME is tagged REPOSITORY:NN-NAME.",
        "set -eu",
        "umask 022",
        'HERE=$(CDPATH="" cd -- "$(dirname -- "$0")" && pwd)',
        f'IMAGE="${{{IMAGE_ENV}:-{image_repository(root)}}}"',
        'VALUES="$HERE/values"',
        f'STEPS="{" ".join(s.folder for s in steps)}"',
        "",
        'say() { echo "run.sh: $*" >&2; }',
        "",
        "# take FROM TO: a value the notebook gave or an earlier step returned, for the next step",
        "take() {",
        '    if [ ! -f "$1" ]; then',
        '        say "$1 is missing: the step that makes it did not return it (outputs.json '
        'beside it says why)"',
        "        exit 1",
        "    fi",
        '    cp "$1" "$2"',
        "}",
        "",
        "# run_step NN-NAME [docker run options]: its values folder as /mlc/in and /mlc/out",
        "run_step() {",
        "    step=$1",
        "    shift",
        '    say "step $step"',
        "    # The image runs as an unprivileged user (uid 1000), which must write out/.",
        '    chmod 0777 "$VALUES/$step/out"',
        '    docker run --rm "$@" -v "$VALUES/$step/in:' + IN_DIR + ':ro" \\',
        '        -v "$VALUES/$step/out:' + OUT_DIR + '" "$IMAGE:$step"',
        "}",
        "",
        'case "${1:-run}" in',
        "    run | build | push) ;;",
        '    *) say "usage: sh run.sh [run|build|push]"; exit 2 ;;',
        "esac",
        "for step in $STEPS; do",
        '    say "building $IMAGE:$step"',
        '    docker build -t "$IMAGE:$step" "$HERE/steps/$step" >&2',
        "done",
        'if [ "${1:-run}" = build ]; then exit 0; fi',
        'if [ "${1:-run}" = push ]; then',
        '    for step in $STEPS; do docker push "$IMAGE:$step"; done',
        "    exit 0",
        "fi",
        "",
        'rm -rf "$VALUES"',
        'for step in $STEPS; do mkdir -p "$VALUES/$step/in" "$VALUES/$step/out"; done',
    ]
    for s in steps:
        label = s.record.get("name") or "unnamed"
        lines += ["", f"# step {s.number}: {label} (snapshot {s.record['id']})"]
        for _name, inside, src in s.inputs:
            origin = (
                f'"$HERE/inputs/{src.path}"'
                if src.kind == "notebook"
                else f'"$VALUES/{src.step}/out/{src.path}"'
            )
            lines.append(f'take {origin} "$VALUES/{s.folder}/in/{inside}"')
        lines.append(" ".join(["run_step", s.folder, *_run_options(s, listed.get(s.folder))]))
    lines += [
        "",
        f'say "done: {len(steps)} step{"s" * (len(steps) != 1)} ran"',
        f'echo "The last step\'s outputs ({last.folder}): $VALUES/{last.folder}/out"',
        f'ls "$VALUES/{last.folder}/out"',
        "",
    ]
    return "\n".join(lines)


def _run_options(step: ExportStep, listed=None) -> list[str]:
    """``docker run`` options that make the step's container as it was recorded."""
    return docker_run_options(step.spec, step.record, listed)


# -- README -----------------------------------------------------------------------------------


def readme(root: str, steps: list[ExportStep], k8s_images: str | None = None) -> str:
    """README.md; with ``k8s_images`` (pipeline.yaml's image repository), its part on it."""
    last = steps[-1]
    rows = []
    for s in steps:
        takes = ", ".join(
            f"{n} ← {'notebook' if src.kind == 'notebook' else src.step}" for n, _, src in s.inputs
        )
        rows.append(
            f"| {s.number} | `{s.folder}` | {s.record['id']} | {takes or '–'} | "
            f"{', '.join(s.spec.outputs) or '–'} |"
        )
    secrets = sorted({k for s in steps for k in s.spec.secrets})
    named = f" ({last.record['name']})" if last.record.get("name") else ""
    text = f"""# Pipeline of snapshot {root}{named}

The {len(steps)} steps that led to snapshot {root}{named}, exported by mlcontainer-magics:
each step a containerized notebook cell with its own environment, the values passing from step
to step as they did in the notebook. Run it with Docker alone (no mlcontainer-magics needed),
from any folder:

    sh run.sh

It builds every step's image (`docker build`, offline: each step carries its locked wheels),
then runs the steps in order (`docker run --rm`) and prints where the last step's outputs are
(`values/{last.folder}/out/`). `sh run.sh build` only builds the images, `sh run.sh push`
builds and pushes them. The images are tagged `$MLC_PIPELINE_IMAGE:NN-NAME` (default
`{image_repository(root)}:NN-NAME`); remove them with `docker rmi` when done.

| step | folder | snapshot | takes | returns |
| --- | --- | --- | --- | --- |
{chr(10).join(rows)}

- `steps/NN-NAME/` is each step's build context (a single export without values of its own;
  its README says more).
- `inputs/NN-NAME/` holds the values the notebook gave that step, as recorded.
- `values/NN-NAME/` is made by `run.sh`: `in/` holds the files the step reads (mounted
  read-only as `/mlc/in`, under the names its `mlc/manifest.json` gives), `out/` what it
  returns (mounted as `/mlc/out`; made writable for the image's user, uid 1000). An output
  file is `v-NAME.EXT`; `out/outputs.json` says which were written, or why not.
- `pipeline.json` lists each step's inputs (and where they come from) and its outputs, with
  the digests recorded when the pipeline ran in the notebook.
"""
    if secrets:
        text += (
            f"- The steps use the secrets {', '.join(secrets)}, whose values are never "
            "recorded: set them in the environment before `sh run.sh`.\n"
        )
    if k8s_images:
        text += k8s_readme(k8s_images)
    return text
