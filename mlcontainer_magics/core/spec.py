"""A frozen description of one containerized run, validated before any work starts.

Pure: standard library and ``packaging`` only. Everything user-typed passes through here, so a
bad flag fails with a clear SpecError before an image is built or a container started.
"""

from __future__ import annotations

import ast
import hashlib
import json
import re
import threading
from dataclasses import asdict, dataclass, field
from urllib.parse import urlsplit

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from ..errors import SpecError
from ..runner import DEFAULT_ENTRY, WORK_DIR

NETWORKS = ("bridge", "none")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_ENV_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Debian package names (policy 5.6.1), optionally with =version or :arch.
_APT_RE = re.compile(r"^[a-z0-9][a-z0-9+.-]+(:[a-z0-9-]+)?(=[A-Za-z0-9.+~:-]+)?$")
_IDENT_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_MEMORY_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)\s*$", re.IGNORECASE)
_MEMORY_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
# Docker refuses a memory limit below 6 MiB; say so before it does.
MIN_MEMORY = 6 * 1024**2
# Docker's smallest CPU limit; below it the limit would round to 0 nanoCPUs, which means none.
MIN_CPUS = 0.01
# A longer timer overflows in the timer thread, which would silently run without a timeout.
MAX_TIMEOUT = threading.TIMEOUT_MAX
MAX_REPLICAS = 1000
MAX_PARALLEL = 1000  # --parallel: containers of one map at once
MAX_RETRIES = 100  # --retries: attempts of one item beyond its first
# An image reference as Docker parses it: [domain[:port]/]path[:tag][@digest], path lowercase.
_DOMAIN = (
    r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*"
)
_PATH = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_IMAGE_RE = re.compile(
    rf"^(?:{_DOMAIN}(?::[0-9]+)?/)?{_PATH}(?:/{_PATH})*(?::[A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}})?"
    r"(?:@[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,})?$"
)


def digest(obj) -> str:
    """sha256 hex of the canonical JSON of ``obj``."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=list)
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class EnvSpec:
    """What goes into an environment image: everything but the cell's code."""

    base_image: str
    apt: tuple[str, ...] = ()
    requirements: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        check_image(self.base_image)

    def key(self) -> str:
        return digest(
            {
                "base": self.base_image,
                "apt": sorted(self.apt),
                "requirements": sorted(self.requirements),
            }
        )


@dataclass(frozen=True)
class MountSpec:
    """A host file or folder the cell sees: ``source`` (absolute, resolved) at ``target``."""

    source: str
    target: str  # absolute path in the container
    writable: bool = False

    @property
    def mode(self) -> str:
        return "rw" if self.writable else "ro"


@dataclass(frozen=True)
class ServeSpec:
    """``--serve NAME``: after the cell has run, its container serves ``entry`` over HTTP."""

    name: str
    entry: str = DEFAULT_ENTRY
    port: int | None = None  # the host port of the URL users see; None: a free one
    replicas: int = 1


@dataclass(frozen=True)
class MapSpec:
    """``--map NAME [--parallel P] [--retries K]``: the cell runs once per item of the notebook
    value NAME, in a container of its own, with NAME bound to that item."""

    name: str
    parallel: int | None = None  # containers at once; None: the backend's default
    retries: int = 0  # attempts of a failed item beyond its first


@dataclass(frozen=True)
class RunSpec:
    code: str
    env_spec: EnvSpec
    name: str | None = None
    env: tuple[tuple[str, str], ...] = ()
    cpus: float | None = None
    memory: int | None = None
    gpus: str | None = None
    network: str = "bridge"
    timeout: float | None = None
    inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    session: str | None = None
    captured: tuple[str, ...] = ()  # pins taken from the kernel's installed versions
    secret_env: frozenset[str] = field(default_factory=frozenset)
    mounts: tuple[MountSpec, ...] = ()
    secrets: tuple[str, ...] = ()  # names only: values are given to a run, never recorded
    serve: ServeSpec | None = None
    map: MapSpec | None = None

    def __post_init__(self) -> None:
        if self.serve is not None:
            check_serve(self)
        if self.map is not None:
            check_map(self)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["secret_env"] = sorted(self.secret_env)
        return d

    def masked_env(self) -> dict[str, str]:
        """The environment as it may be recorded: values of secrets masked."""
        return {k: ("***" if k in self.secret_env or looks_secret(k) else v) for k, v in self.env}


def parse_serve(name, *, port=None, entry=None, replicas=None) -> ServeSpec | None:
    """``--serve NAME [--port PORT] [--entry FUNC] [--replicas N]``; None without --serve
    (and then the other three are refused: they mean nothing alone)."""
    if name is None:
        given = [
            f for f, v in (("--port", port), ("--entry", entry), ("--replicas", replicas)) if v
        ]
        if given:
            raise SpecError(f"{', '.join(given)}: only with --serve NAME; add --serve NAME.")
        return None
    name = parse_name(name)
    entry = entry or DEFAULT_ENTRY
    if not _IDENT_RE.fullmatch(entry):
        raise SpecError(f"--entry {entry!r} is not a Python function name; e.g. --entry predict.")
    return ServeSpec(
        name,
        entry,
        parse_port(port),
        _int_flag("--replicas", replicas, 1, MAX_REPLICAS) or 1,
    )


def parse_map(name, *, parallel=None, retries=None) -> MapSpec | None:
    """``--map NAME [--parallel P] [--retries K]``; None without --map (and then the other two
    are refused: they mean nothing alone)."""
    if name is None:
        given = [f for f, v in (("--parallel", parallel), ("--retries", retries)) if v is not None]
        if given:
            raise SpecError(f"{', '.join(given)}: only with --map NAME; add --map NAME.")
        return None
    if not isinstance(name, str) or not _IDENT_RE.fullmatch(name):
        raise SpecError(
            f"--map {name!r} is not a Python variable name; name the notebook variable that "
            "holds the items, e.g. --map shards."
        )
    return MapSpec(
        name,
        _int_flag("--parallel", parallel, 1, MAX_PARALLEL),
        _int_flag("--retries", retries, 0, MAX_RETRIES) or 0,
    )


def check_map(spec: RunSpec) -> None:
    """What a mapped cell cannot have, refused before any work."""
    assert spec.map is not None, "a mapped spec"
    name = spec.map.name
    if name in spec.inputs:
        raise SpecError(
            f"--map {name} and --in {name}: the map sends each container one item of {name}; "
            f"drop {name} from --in (the other --in values are sent to every item)."
        )
    if spec.serve is not None:
        raise SpecError(
            "--map and --serve do not go together: a service is one container that keeps "
            "running. Drop one of them."
        )
    if spec.session:
        raise SpecError(
            "--map and --session do not go together: every item runs in a fresh container of "
            "its own. Drop --session."
        )


def parse_port(value) -> int | None:
    """--port: a TCP port, 1-65535; None when not given."""
    return _int_flag("--port", value, 1, 65535)


def _int_flag(flag: str, value, low: int, high: int) -> int | None:
    if value is None:
        return None
    try:
        number = int(str(value))
    except ValueError:
        raise SpecError(f"{flag} {value!r} is not a whole number.") from None
    if not low <= number <= high:
        raise SpecError(f"{flag} {value!r}: use a number from {low} to {high}.")
    return number


def check_serve(spec: RunSpec) -> None:
    """What a served cell cannot have, refused before any work."""
    if spec.session:
        raise SpecError(
            "--serve and --session do not go together: a service runs in a container of its "
            "own for as long as it serves. Drop --session."
        )
    if spec.outputs:
        raise SpecError(
            "--out does not go with --serve: the served container keeps running, and its "
            "function's results come back as answers to requests. Drop --out (serve the "
            "values from the cell's function instead)."
        )


def serve_manifest(serve: ServeSpec, run_id: str, lock) -> dict:
    """The ``serve`` block of /mlc/manifest.json (the runner's --http reads it): what the
    container serves, and which snapshot and lock it is."""
    return {
        "name": serve.name,
        "entry": serve.entry,
        "snapshot": run_id,
        "lock_digest": "sha256:" + digest(list(lock or [])),
    }


def looks_secret(key: str) -> bool:
    return bool(re.search(r"TOKEN|SECRET|PASSWORD|PASSWD|API_?KEY|CREDENTIAL|AUTH", key, re.I))


def check_image(ref) -> str:
    """A base image reference Docker can parse, or a SpecError before the engine is asked."""
    if not isinstance(ref, str) or len(ref) > 512 or not _IMAGE_RE.fullmatch(ref):
        raise SpecError(
            f"Base image {ref!r} is not an image reference; use a name such as "
            "python:3.11-slim (lowercase, with an optional :tag or @sha256:digest) "
            "with --base or the base_image setting."
        )
    return ref


def parse_requirement(text: str) -> str:
    """Validate one PEP 508 specifier and return it in canonical form."""
    text = text.strip()
    try:
        req = Requirement(text)
    except InvalidRequirement as e:
        raise SpecError(
            f"Invalid requirement {text!r}: {e}. Use a PEP 508 specifier such as "
            f"'numpy==1.26.4' or 'pandas>=2,<3'."
        ) from None
    if req.url and not req.url.startswith(("https://", "http://")):
        raise SpecError(
            f"Requirement {text!r} points at {req.url!r}, which a container cannot "
            "reach; use a package name with a version, or an https URL."
        )
    if req.url and _has_credentials(req.url):
        shown = text.replace(urlsplit(req.url).netloc.rpartition("@")[0], "***")
        raise SpecError(
            f"Requirement {shown!r} has credentials in its URL, which would be kept "
            "in the snapshot and the image's labels. Put the index and its "
            "credentials in pip's settings (pip config set global.extra-index-url "
            "...), which builds use without recording them, and name the package."
        )
    return str(req)


def _has_credentials(url: str) -> bool:
    try:
        return "@" in urlsplit(url).netloc
    except ValueError:
        return True  # unparseable: refuse rather than record it


def parse_requirements_text(text: str, source: str = "requirements") -> list[str]:
    """Parse requirements-file text: one specifier per line, comments and blanks ignored."""
    out = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("-"):
            raise SpecError(
                f"{source}, line {lineno}: pip options ({line.split()[0]}) are not "
                "supported in a cell's requirements; configure the index with pip's "
                "own settings (pip config), which builds use."
            )
        try:
            out.append(parse_requirement(line))
        except SpecError as e:
            raise SpecError(f"{source}, line {lineno}: {e}") from None
    return out


def merge_requirements(reqs) -> tuple[str, ...]:
    """Deduplicate by project name; the same project twice with different specifiers is an error."""
    by_name: dict[str, str] = {}
    for r in reqs:
        name = canonicalize_name(Requirement(r).name)
        if name in by_name and by_name[name] != r:
            raise SpecError(f"{name} is required twice, as {by_name[name]!r} and {r!r}; keep one.")
        by_name[name] = r
    return tuple(sorted(by_name.values(), key=str.lower))


def parse_memory(text: str) -> int:
    m = _MEMORY_RE.match(str(text))
    if not m:
        raise SpecError(
            f"--memory {text!r} is not a size; use a number with a unit, such as 512m or 2g."
        )
    value = int(float(m.group(1)) * _MEMORY_UNITS[m.group(2).lower()])
    if value < MIN_MEMORY:
        raise SpecError(f"--memory {text!r} is below Docker's minimum of 6m; use at least 6m.")
    return value


def parse_cpus(text) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise SpecError(f"--cpus {text!r} is not a number; use for example 0.5 or 2.") from None
    if not value > 0 or value != value or value > 1024:
        raise SpecError(f"--cpus {text!r} must be a positive number of CPUs, such as 0.5 or 2.")
    if value < MIN_CPUS:
        raise SpecError(
            f"--cpus {text!r} is below Docker's minimum of {MIN_CPUS}; use at least {MIN_CPUS}."
        )
    return value


def parse_timeout(text) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise SpecError(f"--timeout {text!r} is not a number of seconds.") from None
    if not value > 0 or value == float("inf"):
        raise SpecError(f"--timeout {text!r} must be a positive number of seconds.")
    if value > MAX_TIMEOUT:
        raise SpecError(
            f"--timeout {text!r} is too long; use at most {MAX_TIMEOUT:.0f} seconds, "
            "or no --timeout for none."
        )
    return value


def parse_gpus(text) -> str:
    text = str(text).strip()
    if text == "all" or (re.fullmatch(r"[0-9]+", text) and int(text) > 0):
        return text
    raise SpecError(f"--gpus {text!r}: use 'all' or a positive number of GPUs.")


def parse_network(text) -> str:
    if text not in NETWORKS:
        raise SpecError(f"--network {text!r}: use one of {', '.join(NETWORKS)}.")
    return text


def parse_env(items) -> tuple[tuple[str, str], ...]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not _ENV_KEY_RE.fullmatch(key):
            raise SpecError(f"-e {item!r}: use KEY=VALUE with a KEY of letters, digits and _.")
        out[key] = value
    return tuple(sorted(out.items()))


def parse_name(text) -> str:
    if not _NAME_RE.fullmatch(text or ""):
        raise SpecError(
            f"Name {text!r}: use up to 64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit."
        )
    return text


def parse_apt(names) -> tuple[str, ...]:
    for n in names:
        if not _APT_RE.fullmatch(n):
            raise SpecError(
                f"--apt {n!r} is not a Debian package name (lowercase letters, "
                "digits, '+', '-', '.')."
            )
    return tuple(sorted(set(names)))


def parse_identifiers(text: str, flag: str) -> tuple[str, ...]:
    names = [n.strip() for n in (text or "").split(",") if n.strip()]
    for n in names:
        if not _IDENT_RE.fullmatch(n):
            raise SpecError(f"{flag} {n!r} is not a Python variable name.")
    return tuple(dict.fromkeys(names))


def check_syntax(code: str, filename: str = "<cell>") -> None:
    """Fail on a syntax error before building anything."""
    try:
        ast.parse(code, filename=filename)
    except SyntaxError as e:
        line = (e.text or "").rstrip()
        pointer = f"\n    {line}\n    {' ' * max((e.offset or 1) - 1, 0)}^" if line else ""
        where = f" at line {e.lineno}" if e.lineno else ""
        raise SpecError(
            f"The cell has a syntax error{where}: {e.msg}{pointer}\n"
            "Fix the cell; nothing was built."
        ) from None


# -- mounts and secrets ------------------------------------------------------------------------

# Where a mount may not go: over the system, or what the runner and secrets use; and not
# over these folders as a whole (below them is fine: /tmp/data, /var/data).
_RESERVED_TREES = (
    "/mlc",
    "/run/secrets",
    "/proc",
    "/sys",
    "/dev",
    "/usr",
    "/bin",
    "/sbin",
    "/lib",
    "/lib64",
    "/etc",
    "/boot",
    "/var/lib",
)
_RESERVED_FOLDERS = ("/", "/tmp", "/var", "/run", "/home", "/root", "/opt", "/srv", "/mnt")
_SECRET_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")


def parse_mounts(items, cwd, volumes=None) -> tuple[MountSpec, ...]:
    """``--mount PATH[:rw]`` / ``SRC:DEST[:ro|rw]``, relative to ``cwd`` (the notebook's
    folder). A relative path (or one inside ``cwd``) appears at the same place relative to the
    cell's working directory; another absolute path at the same absolute path. A name in
    ``volumes`` (the backend's own storage, e.g. a PersistentVolumeClaim) need not exist here."""
    import os
    from pathlib import Path, PurePosixPath

    from .datatree import check_tree  # walks folders: only when there are mounts

    cwd = os.path.realpath(cwd)
    out: dict[str, MountSpec] = {}
    for item in items:
        parts = str(item).split(":")
        writable = False
        if len(parts) > 1 and parts[-1] in ("ro", "rw"):
            writable = parts.pop() == "rw"
        if len(parts) > 2 or not parts[0]:
            raise SpecError(f"--mount {item!r}: use PATH, PATH:rw, or SRC:DEST[:rw].")
        given, dest = parts[0], (parts[1] if len(parts) == 2 else None)
        for what in (given, dest or ""):
            if ".." in PurePosixPath(what).parts:
                raise SpecError(
                    f"--mount {item!r}: '..' is not allowed; name the folder "
                    "itself (relative to the notebook, or absolute)."
                )
        if given in (volumes or {}):
            target = _target(dest or given)
            out[target] = MountSpec((volumes or {})[given], target, writable)
            continue
        source = given if os.path.isabs(given) else os.path.join(cwd, given)
        if not os.path.exists(source):
            raise SpecError(
                f"--mount {item!r}: {source} does not exist. Mount a file or "
                "folder that exists (paths are relative to the notebook's folder)."
            )
        real = os.path.realpath(source)
        if dest is None:
            inside = not os.path.isabs(given) or _is_within(real, cwd)
            dest = (
                os.path.relpath(real if os.path.isabs(given) else source, cwd) if inside else real
            )
        target = _target(dest, item)
        if target in out:
            raise SpecError(f"--mount: two mounts go to {target}; give one a DEST.")
        check_tree(Path(real))
        out[target] = MountSpec(real, target, writable)
    return tuple(out[k] for k in sorted(out))


def _target(dest: str, item: str | None = None) -> str:
    """Where a mount goes in the container: relative to the working directory, or absolute."""
    import os
    from pathlib import PurePosixPath

    target = str(PurePosixPath(WORK_DIR) / dest) if not dest.startswith("/") else dest
    target = os.path.normpath(target)
    if target in _RESERVED_FOLDERS or any(
        target == r or target.startswith(r + "/") for r in _RESERVED_TREES
    ):
        raise SpecError(
            f"--mount {item or dest!r}: {target} is a system folder of the container; "
            "put it elsewhere with SRC:DEST (e.g. data:/data)."
        )
    return target


def _is_within(path: str, folder: str) -> bool:
    import os

    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def parse_secret_names(items) -> tuple[str, ...]:
    """``--secret NAME`` (or ``NAME=@path``): the names, checked; where values come from is
    the front end's business (secrets.resolve)."""
    names = []
    for item in items:
        name = str(item).split("=", 1)[0]
        if not _SECRET_RE.fullmatch(name):
            raise SpecError(
                f"--secret {item!r}: use NAME or NAME=@path, with a NAME of "
                "letters, digits and _ (an environment variable name)."
            )
        names.append(name)
    return tuple(sorted(set(names)))
