"""The IPython magics: arguments -> spec -> run -> output. Thin by design."""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments

from ..backends import BACKENDS, Backends
from ..config import MlcontainerSettings
from ..core import runs, secrets, transfer
from ..core import spec as specs
from ..core.events import Phase
from ..core.owner import OWNER
from ..core.requirements import capture_pins
from ..core.richoutput import StdoutDemux
from ..errors import MlcError, RunError, SpecError
from .display import open_display


@magics_class
class ContainerizeMagics(Magics, MlcontainerSettings):
    """Run cells in Docker containers (or Kubernetes Jobs).

    Settings (`%config ContainerizeMagics.NAME = VALUE`, or the environment variable given;
    they are MlcontainerSettings', which the CLI and the server read too):
      base_image    default base image            MLCONTAINER_BASE_IMAGE; python:X.Y-slim
      namespace     prefix of images/volumes      MLCONTAINER_NAMESPACE; mlcontainer
      timeout       default --timeout in seconds  MLCONTAINER_TIMEOUT; none
      network       default --network             MLCONTAINER_NETWORK; bridge
      raise_error   raise on a nonzero exit       MLCONTAINER_RAISE_ERROR; true
      store_dir     where snapshots are kept      MLCONTAINER_STORE
      backend_name  docker or kubernetes          MLCONTAINER_BACKEND; docker
      standby       a started container kept ready MLCONTAINER_STANDBY; true
      standby_max   standby containers per kernel MLCONTAINER_STANDBY_MAX; 2
      standby_idle  seconds an unused one is kept MLCONTAINER_STANDBY_IDLE; 600
    """

    def __init__(self, shell=None, **kwargs):
        super().__init__(shell=shell, **kwargs)
        # A kernel's Docker backend cleans up after kernels that died mid-run (their orphans).
        # ... and keeps standby containers (the standby settings).
        self.backends = Backends(self, clean_orphans=True, standby=True)
        self.backends.warm_up_in_background()
        self._store = None
        if shell is not None:
            shell.set_custom_exc((MlcError,), _show_error)

    @property
    def backend(self):
        return self.backends.get()

    def backend_for(self, name: str):
        """One backend object per kind and namespace, kept for the kernel's life."""
        return self.backends.get(name)

    @property
    def store(self):
        from ..core.store import Store  # sqlite3 on first use: `%load_ext` stays fast

        if self._store is None or str(self._store.root) != self.store_dir:
            self._store = Store(self.store_dir)
        return self._store

    def _context(self) -> dict:
        ns = self.shell.user_ns if self.shell is not None else {}
        notebook = (
            ns.get("__session__")
            or os.environ.get("JPY_SESSION_NAME")
            or ns.get("__vsc_ipynb_file__")
        )
        return {
            "notebook": notebook,
            "cell": getattr(self.shell, "execution_count", None),
            "kernel": OWNER,
        }

    @line_magic
    def container(self, line):
        """Work with recorded snapshots:

          %container list [-n N] [--name NAME] [--json]
          %container show ID [--json]        %container logs ID
          %container lineage ID [--json]     (the snapshots whose values led to ID)
          %container rerun ID [--verify] [--pipeline]   (--pipeline: every step that led to ID)
          %container rerun ID [--verify] --item I       (one item of a map)
          %container diff A B [--pipeline]
          %container export ID DIR [--tar]   %container rm ID [ID ...]
          %container prune                  %container stop NAME  (a service or session)
          %container services               %container logs NAME  (a service's live log)
          %container serve ID [--name NAME] [--port PORT]

        The same verbs run in a terminal as `mlcontainer VERB ...`.
        """
        from .commands import build_parser, run_verb  # the snapshot verbs, on first use

        try:
            argv = shlex.split(line)
        except ValueError as e:
            raise UsageError(f"Cannot parse {line!r}: {e}.") from None
        if not argv:
            raise UsageError(self.container.__doc__)
        try:
            args = build_parser(for_magic=True).parse_args(argv)
        except SystemExit:
            raise UsageError(f"Usage: {self.container.__doc__}") from None
        text = run_verb(args, store=self.store, backends=self.backends, output=_write_output)
        if text:
            print(text)

    @magic_arguments()
    @argument("-n", "--name", help="A name for this run's snapshot.")
    @argument(
        "-r",
        "--requirements",
        nargs="+",
        action="append",
        default=[],
        metavar="SPEC",
        help="pip requirements (PEP 508), e.g. -r numpy==1.26.4 'pandas>=2'.",
    )
    @argument("-f", "--requirements-file", metavar="PATH", help="A requirements.txt file.")
    @argument("--base", metavar="IMAGE", help="Base image (default: the base_image setting).")
    @argument(
        "--apt",
        nargs="+",
        action="append",
        default=[],
        metavar="PKG",
        help="Debian packages to install in the image.",
    )
    @argument(
        "-e",
        "--env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="An environment variable for the cell (repeatable).",
    )
    @argument("--cpus", help="CPU limit, e.g. 0.5 or 2.")
    @argument("--memory", help="Memory limit, e.g. 512m or 2g.")
    @argument("--gpus", help="GPUs: all or a number.")
    @argument("--network", help="bridge (default) or none.")
    @argument("--timeout", help="Stop the container after this many seconds.")
    @argument(
        "--in",
        dest="inputs",
        metavar="A,B",
        default="",
        help="Notebook variables to send into the container.",
    )
    @argument(
        "--out",
        dest="outputs",
        metavar="C,D",
        default="",
        help="Variables to bring back into the notebook when the cell succeeds.",
    )
    @argument(
        "--backend",
        choices=BACKENDS,
        help="Where the cell runs (default: the backend_name setting, docker).",
    )
    @argument(
        "--session",
        metavar="NAME",
        help="Run in a warm session: the container and its state live on between cells.",
    )
    @argument(
        "--serve",
        metavar="NAME",
        help="Serve the cell over HTTP after it has run: POST /predict calls its predict "
        "function (see --entry), at http://127.0.0.1:PORT, until the kernel ends or "
        "`%%container stop NAME`. Running the cell again replaces the service.",
    )
    @argument(
        "--map",
        metavar="NAME",
        help="Run the cell once per item of the notebook variable NAME (a list, a tuple, a "
        "numpy array along its first axis, a list of DataFrames), each in a fresh container "
        "with NAME bound to its item and MLC_INDEX set; each --out comes back as a list in "
        "item order (None for a failed item). --in values are shared by every item.",
    )
    @argument("--parallel", help="With --map: items running at once (default: the cores).")
    @argument("--retries", help="With --map: retry a failed item up to this many times.")
    @argument("--port", help="With --serve: the port on 127.0.0.1 (default: a free one).")
    @argument("--entry", help="With --serve: the cell's function to serve (default: predict).")
    @argument(
        "--replicas", help="With --serve: copies of the service (more than 1: Kubernetes only)."
    )
    @argument(
        "--mount",
        nargs="+",
        action="append",
        default=[],
        metavar="PATH",
        help="Files or folders the cell sees at the same relative path (PATH, read-only; "
        "PATH:rw, writable; SRC:DEST to put one elsewhere). Their digests are recorded.",
    )
    @argument(
        "--secret",
        nargs="+",
        action="append",
        default=[],
        metavar="NAME",
        help="Secrets the cell gets as variables and as /run/secrets/NAME: from the kernel's "
        "environment or the secrets_file setting (NAME), or a file (NAME=@path). Never recorded.",
    )
    @argument(
        "--no-capture",
        action="store_true",
        help="Do not pin what the cell imports to the kernel's installed versions.",
    )
    @argument("--rebuild", action="store_true", help="Rebuild the environment image.")
    @argument(
        "--no-raise-error",
        action="store_true",
        help="Do not raise when the cell fails; the failure is still reported.",
    )
    @cell_magic
    def containerize(self, line, cell):
        """Run this cell in a fresh Docker container with its own pip packages.

        The environment (base image + apt + pip packages) is built once and reused by every
        cell that needs the same one; editing the code never reinstalls packages, and the next
        cell in it runs in a container started ahead (a standby: see the standby setting). Output
        streams into the cell while it runs. Ctrl-C (the stop button) stops and removes the
        container.
        """
        args = _parse(self.containerize, line)
        backend = self.backend_for(args.backend or self.backend_name)
        spec = self._spec(args, cell, volumes=backend.named_volumes())
        try:
            inputs = transfer.check_inputs(spec.inputs, self.shell.user_ns)
            if spec.map is not None:  # its items are checked, before anything is built
                inputs[spec.map.name] = _map_value(spec.map.name, self.shell.user_ns)
            secret_values = secrets.resolve(
                [s for group in args.secret for s in group], os.environ, self.secrets_file
            )
        except SpecError as e:
            raise UsageError(str(e)) from None
        demux = StdoutDemux(lambda text: _write_output("stdout", text), _publish)

        def output(stream, text):
            if stream == "stdout":
                demux.feed(text)
            else:
                _write_output(stream, text)

        run: dict[str, str] = {}
        # A click on the widget's Stop reaches the kernel only after the cell ends (ipykernel
        # routes a comm's messages to the shell that published on it, and this one is busy);
        # in JupyterLab the sidebar extension stops the run through the server instead.
        display = open_display(
            on_stop=lambda: runs.request_stop(self.store, backend, run.get("id", "")),
            shell=self.shell,
        )

        def events(phase, **info):
            if phase == Phase.RECORDED:
                run["id"] = info["snapshot"]
            display(phase, **info)

        display.show()
        try:
            outcome, service, error = self._run_or_serve(
                spec,
                backend,
                inputs=inputs,
                output=output,
                events=events,
                rebuild=args.rebuild,
                store=self.store,
                context=self._context(),
                secrets=secret_values,
            )
            demux.close()
            if error is not None:
                display(
                    Phase.FINISHED,
                    status=error.reason,
                    message=str(error),
                    exit_code=error.exit_code,
                    detail=error.logs,
                )
            elif service is not None:  # it lives on: the display ends saying where
                display(Phase.FINISHED, status="serving", message=f"serving at {service.url}")
            else:
                display(Phase.FINISHED, status="done", message="done", exit_code=0)
        except BaseException as e:
            display.close(e)
            raise
        finally:
            demux.close()
            display.close()
        if error is None and service is not None:
            from .commands import served_line

            print(f"[mlcontainer] {served_line(service)}")
            return
        if error is None or (outcome is not None and outcome.map is not None):
            # A map's items that succeeded are not lost with those that failed (None).
            self.shell.user_ns.update(outcome.values)
        if error is None:
            return
        if self.raise_error and not args.no_raise_error:
            raise error
        print(f"[mlcontainer] {error}", file=sys.stderr)

    @staticmethod
    def _run_or_serve(spec, backend, **kwargs):
        """(outcome, service, the error to raise): a run's (or a map's) outcome, or a served
        cell's service (--serve), whose failed cell is a RunError like a run's."""
        if spec.map is not None:
            from ..core import maps

            outcome = maps.execute_map(spec, backend, **kwargs)
            return outcome, None, maps.map_error(outcome) or runs.outcome_error(outcome)
        if spec.serve is None:
            outcome = runs.execute(spec, backend, **kwargs)
            return outcome, None, runs.outcome_error(outcome)
        from ..core import services

        try:
            return None, services.serve(spec, backend, **kwargs), None
        except RunError as e:
            return None, None, e

    def _spec(self, args, cell: str, volumes=None) -> specs.RunSpec:
        """All validation happens here, before anything is built."""
        try:
            specs.check_syntax(cell)
            reqs = [specs.parse_requirement(r) for group in args.requirements for r in group]
            if args.requirements_file:
                path = Path(args.requirements_file).expanduser()
                try:
                    text = path.read_text()
                except (OSError, UnicodeDecodeError) as e:
                    why = e.strerror if isinstance(e, OSError) else "it is not UTF-8 text"
                    raise SpecError(
                        f"Cannot read requirements file {str(path)!r}: {why}."
                    ) from None
                reqs += specs.parse_requirements_text(text, source=str(path))
            apt = specs.parse_apt([p for group in args.apt for p in group])
            captured = [] if args.no_capture else capture_pins(cell, reqs)
            if captured:
                print(
                    "[mlcontainer] pinned from the kernel: "
                    + " ".join(captured)
                    + "  (--no-capture to turn off)"
                )
            env_spec = specs.EnvSpec(
                base_image=args.base or self.base_image,
                apt=apt,
                requirements=specs.merge_requirements(reqs + captured),
            )
            timeout = args.timeout if args.timeout is not None else self.timeout
            return specs.RunSpec(
                code=cell,
                env_spec=env_spec,
                name=specs.parse_name(args.name) if args.name else None,
                env=specs.parse_env(args.env),
                cpus=specs.parse_cpus(args.cpus) if args.cpus is not None else None,
                memory=specs.parse_memory(args.memory) if args.memory is not None else None,
                gpus=specs.parse_gpus(args.gpus) if args.gpus is not None else None,
                network=specs.parse_network(args.network or self.network),
                timeout=specs.parse_timeout(timeout) if timeout is not None else None,
                inputs=specs.parse_identifiers(args.inputs, "--in"),
                outputs=specs.parse_identifiers(args.outputs, "--out"),
                captured=tuple(captured),
                session=specs.parse_name(args.session) if args.session else None,
                mounts=specs.parse_mounts(
                    list(self.default_mounts) + [m for group in args.mount for m in group],
                    cwd=os.getcwd(),
                    volumes=volumes,
                ),
                secrets=specs.parse_secret_names([s for group in args.secret for s in group]),
                serve=specs.parse_serve(
                    args.serve, port=args.port, entry=args.entry, replicas=args.replicas
                ),
                map=specs.parse_map(args.map, parallel=args.parallel, retries=args.retries),
            )
        except SpecError as e:
            raise UsageError(str(e)) from None


def _map_value(name: str, namespace: dict):
    """The notebook value --map NAME maps, its items checked (maps.items_of): SpecError."""
    from ..core import maps

    if name not in namespace:
        raise SpecError(
            f"--map {name}: no such variable in the notebook; define it first or fix the name."
        )
    maps.items_of(namespace[name], name)
    return namespace[name]


def _parse(magic, line: str):
    # POSIX quoting, as in a shell: -r 'pandas>=2,<3' arrives without its quotes.
    try:
        argv = shlex.split(line)
    except ValueError as e:
        raise UsageError(f"Cannot parse the options: {e}.") from None
    try:
        return magic.parser.parse_args(argv)
    except UsageError as e:
        raise UsageError(f"{e}. `%%containerize?` lists the options.") from None


def _publish(bundle: dict) -> None:
    from IPython.display import publish_display_data

    publish_display_data(bundle)


def _write_output(stream: str, text: str) -> None:
    target = sys.stdout if stream == "stdout" else sys.stderr
    target.write(text)
    # ipykernel sends what was written every 0.2 s on its own: flushing each chunk would make
    # every chunk a separate output in saved notebooks. Other streams are flushed to stay live.
    if type(target).__name__ != "OutStream":
        target.flush()


def _show_error(shell, etype, value, tb, tb_offset=None):
    """Show our errors as their message (and the container's traceback), not our internals."""
    lines = [f"{etype.__name__}: {value}"]
    if isinstance(value, RunError) and value.logs:
        lines += ["", "Container traceback:", value.logs]
    log = getattr(value, "log", "")
    if log:
        lines += ["", "Build log (last lines):", "\n".join(log.splitlines()[-30:])]
    stb = ["\n".join(lines)]
    shell._showtraceback(etype, value, stb)
    return stb
