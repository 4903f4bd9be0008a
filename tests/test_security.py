"""Safe defaults, proved by what Docker reports; no shell strings; properties of input parsing.

The Docker tests read `docker inspect` of a run's container while its cell sleeps, and what the
cell itself sees in /proc/self/status. The rest needs no engine.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shlex
import string
import tarfile
import threading
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import NAMESPACE
from mlcontainer_magics.backends.docker import build as render
from mlcontainer_magics.core import spec as s
from mlcontainer_magics.errors import SpecError

PACKAGE = Path(__file__).resolve().parents[1] / "mlcontainer_magics"
LABEL = "org.mlcontainer"
BASE = "python:3.11-slim"
docker = pytest.mark.docker


def magics(ip):
    return ip.magics_manager.registry["ContainerizeMagics"]


# == Safe defaults, as Docker reports them =========================================================

PROBE = """
import os, time
status = dict(l.split(':', 1) for l in open('/proc/self/status').read().splitlines() if ':' in l)
for key in ('Uid', 'Gid', 'CapInh', 'CapPrm', 'CapEff', 'CapBnd', 'CapAmb', 'NoNewPrivs',
            'Seccomp'):
    print(key, status[key].split()[0])
for path in ('/mlc/probe', '/mlc/out/probe', '/mlc/io/probe'):
    try:
        open(path, 'w').write('x')
        print('writable', path)
    except OSError as e:
        print('refused', path, e.errno)
print('ready', flush=True)
time.sleep(3)
"""

ZERO_CAPS = "0000000000000000"


def inspect_while_running(docker_client, role):
    """`docker inspect` of the namespace's container of ``role`` while it runs."""
    seen = {}

    def watch():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            found = docker_client.containers.list(
                filters={"label": [f"{LABEL}.namespace={NAMESPACE}", f"{LABEL}.role={role}"]}
            )
            if found:
                found[0].reload()
                seen["attrs"] = found[0].attrs
                return
            time.sleep(0.05)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread, seen


def cell_saw(out: str) -> dict:
    return {
        line.split()[0]: line.split()[1]
        for line in out.splitlines()
        if line.split()
        and line.split()[0]
        in ("Uid", "Gid", "CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs", "Seccomp")
    }


def assert_locked_down(attrs: dict, network: str) -> dict:
    host = attrs["HostConfig"]
    assert attrs["Config"]["User"] == "1000:1000"
    assert host["Privileged"] is False
    assert host["CapDrop"] == ["ALL"] and not host["CapAdd"]
    assert "no-new-privileges" in (host["SecurityOpt"] or [])
    assert host["NetworkMode"] == network
    assert host["PidMode"] == "" and host["IpcMode"] in ("private", "shareable", "none")
    assert host["UTSMode"] == "" and host["UsernsMode"] == ""
    assert not host["Devices"] and not host["DeviceRequests"]
    assert host["PidsLimit"] == 4096
    assert not host.get("VolumesFrom") and not host.get("Links")
    mounts = {m["Destination"]: m for m in attrs["Mounts"]}
    assert all(m["Type"] == "bind" for m in mounts.values())
    assert not any("docker.sock" in m["Source"] for m in mounts.values())
    return mounts


@docker
def test_run_container_is_locked_down(ip, capsys, docker_client, no_leaks):
    thread, seen = inspect_while_running(docker_client, "run")
    ip.run_cell_magic("containerize", "--network none -n mlcsec-run", PROBE)
    thread.join(10)
    out = capsys.readouterr().out
    mounts = assert_locked_down(seen["attrs"], "none")
    # Only the run's own folder: read-only at /mlc, its out/ writable.
    assert sorted(mounts) == ["/mlc", "/mlc/out"]
    folder = Path(mounts["/mlc"]["Source"])
    assert folder.name.startswith("mlc-run-")
    assert mounts["/mlc"]["RW"] is False and mounts["/mlc/out"]["RW"] is True
    assert Path(mounts["/mlc/out"]["Source"]) == folder / "out"
    saw = cell_saw(out)
    assert saw["Uid"] == "1000" and saw["Gid"] == "1000"
    for caps in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert saw[caps] == ZERO_CAPS, (caps, saw)
    assert saw["NoNewPrivs"] == "1" and saw["Seccomp"] == "2"  # docker's default filter
    assert "refused /mlc/probe 30" in out  # EROFS
    assert "writable /mlc/out/probe" in out


@docker
def test_session_container_is_locked_down(ip, capsys, docker_client, no_leaks):
    thread, seen = inspect_while_running(docker_client, "session")
    try:
        ip.run_cell_magic("containerize", "--session mlcsec -n mlcsec-session", PROBE)
    finally:
        thread.join(10)
        ip.run_line_magic("container", "stop mlcsec")
    out = capsys.readouterr().out
    mounts = assert_locked_down(seen["attrs"], "bridge")
    assert sorted(mounts) == ["/mlc", "/mlc/io"]
    folder = Path(mounts["/mlc"]["Source"])
    assert folder.name.startswith("mlc-session-mlcsec-")
    assert mounts["/mlc"]["RW"] is False and mounts["/mlc/io"]["RW"] is True
    saw = cell_saw(out)
    assert saw["Uid"] == "1000" and saw["CapEff"] == ZERO_CAPS and saw["CapBnd"] == ZERO_CAPS
    assert saw["NoNewPrivs"] == "1"
    assert "refused /mlc/probe 30" in out


LITERAL = {
    "A": "$(id)",
    "B": "`id`",
    "C": "; rm -rf / #",
    "D": 'it\'s "q" \\n',
    "E": "$HOME",
    "F": "*",
    "G": "a\nb",
    "H": "x' && echo pwned '",
}


@docker
def test_values_with_shell_metacharacters_pass_literally(ip, capsys, no_leaks):
    argv = [a for k, v in LITERAL.items() for a in ("-e", f"{k}={v}")]
    line = shlex.join(argv + ["-n", "mlcsec-literal_1.0"])
    ip.run_cell_magic(
        "containerize",
        line,
        "import json, os\nprint(json.dumps({k: os.environ[k] for k in 'ABCDEFGH'}))",
    )
    out = capsys.readouterr().out
    got = json.loads(next(x for x in out.splitlines() if x.startswith("{")))
    assert got == LITERAL
    record = magics(ip).store.get("mlcsec-literal_1.0")
    assert {k: record["env"][k] for k in LITERAL} == LITERAL


@docker
def test_index_credentials_and_ca_bundle_never_reach_the_image(docker_client, tmp_path, no_leaks):
    """Extends test_containerize: an index URL with user:password and a CA bundle of our own
    (with a marker) are used by the build, and absent from layers, config, history, labels,
    the build log and the snapshot."""
    from mlcontainer_magics.backends.docker.backend import DockerBackend
    from mlcontainer_magics.backends.docker.pipconfig import BuildNetwork, host_build_network
    from mlcontainer_magics.core import runs
    from mlcontainer_magics.core.spec import EnvSpec, RunSpec
    from mlcontainer_magics.core.store import Store

    host_ca = host_build_network().cert_path or "/etc/ssl/certs/ca-certificates.crt"
    if not os.path.exists(host_ca):
        pytest.skip("no CA bundle on this host to start from")
    password, marker = "mlc-pw-6b1e0c", "mlc-ca-marker-7f3a21"
    ca = tmp_path / "ca.pem"
    ca.write_bytes(Path(host_ca).read_bytes() + f"\n# {marker}\n".encode())
    net = BuildNetwork(index_url=f"https://mlcuser:{password}@pypi.org/simple", cert_path=str(ca))
    backend = DockerBackend(namespace=NAMESPACE, network=net)
    store = Store(tmp_path / "store")
    spec = RunSpec(
        code="import six\nprint(six.__version__)", env_spec=EnvSpec(BASE, (), ("six==1.13.0",))
    )
    outcome = runs.execute(spec, backend, store=store)
    assert outcome.ok and outcome.result.stdout == "1.13.0\n"
    assert not outcome.env.cached  # this build committed the image examined below
    secrets = [password, marker]
    # The index was used: it is the build's only one, and six came from it.
    assert ("six", "1.13.0") in [(e["name"], e["version"]) for e in outcome.env.lock]
    image = docker_client.images.get(outcome.env.image_id)
    visible = (
        json.dumps(image.attrs)
        + json.dumps(image.history())
        + outcome.env.build_log
        + json.dumps(store.get(outcome.run_id))
    )
    for secret in secrets:
        assert secret not in visible
    assert not any(e.startswith("PIP_") for e in image.attrs["Config"]["Env"])
    store.close()
    base_layers = len(docker_client.images.get(BASE).attrs["RootFS"]["Layers"])
    saved = tmp_path / "image.tar"
    with open(saved, "wb") as f:
        for chunk in image.save(named=False):
            f.write(chunk)
    with tarfile.open(saved) as outer:
        manifest = json.load(outer.extractfile("manifest.json"))
        new_layers = manifest[0]["Layers"][base_layers:]
        assert new_layers
        for name in new_layers:
            with tarfile.open(fileobj=outer.extractfile(name)) as layer:
                for member in layer.getmembers():
                    # Its (empty) mount point may stay; nothing that was in it.
                    assert "mlc-build/" not in member.name and "pip.conf" not in member.name
                    if member.isfile():
                        data = layer.extractfile(member).read()
                        for secret in secrets:
                            assert secret.encode() not in data, member.name
                        assert b"BEGIN CERTIFICATE" not in data, member.name


# == No shell string is ever built =================================================================

SHELL_CALLS = {
    ("os", "system"),
    ("os", "popen"),
    ("subprocess", "getoutput"),
    ("subprocess", "getstatusoutput"),
    ("pty", "spawn"),
    ("os", "execlp"),
    ("os", "execvp"),
    ("os", "spawnlp"),
}
SHELLS = {"sh", "bash", "/bin/sh", "/bin/bash", "dash", "zsh"}
PROCESS_CALLS = {
    "run",
    "Popen",
    "call",
    "check_call",
    "check_output",
    "create_subprocess_exec",
    "create_subprocess_shell",
}


def package_sources():
    return sorted(p for p in PACKAGE.rglob("*.py") if "labextension" not in p.parts)


def test_package_source_never_uses_a_shell():
    """No `shell=True`, no os.system/os.popen, no `sh -c`: every command is an argument list,
    and the one shell script (the build's) reads user values from files."""
    offences = []
    for path in package_sources():
        text = path.read_text()
        for needle in ("shell=True", "os.system", "os.popen"):
            if needle in text:
                offences.append(f"{path.name}: {needle}")
        for node in ast.walk(ast.parse(text, str(path))):
            if isinstance(node, ast.Call):
                f = node.func
                called = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
                for kw in node.keywords:
                    if (
                        called in PROCESS_CALLS
                        and kw.arg == "shell"
                        and not (isinstance(kw.value, ast.Constant) and kw.value.value is False)
                    ):
                        offences.append(f"{path.name}:{node.lineno}: shell=")
                if called == "create_subprocess_shell":
                    offences.append(f"{path.name}:{node.lineno}: create_subprocess_shell")
                if (
                    isinstance(f, ast.Attribute)
                    and isinstance(f.value, ast.Name)
                    and (f.value.id, f.attr) in SHELL_CALLS
                ):
                    offences.append(f"{path.name}:{node.lineno}: {f.value.id}.{f.attr}")
            if isinstance(node, (ast.List, ast.Tuple)) and len(node.elts) >= 2:
                first, second = node.elts[:2]
                if isinstance(first, ast.Constant) and first.value in SHELLS:
                    if isinstance(second, ast.Constant) and second.value == "-c":
                        offences.append(f"{path.name}:{node.lineno}: {first.value} -c")
                    elif not _constant_script(second):
                        offences.append(
                            f"{path.name}:{node.lineno}: {first.value} of a computed path"
                        )
    assert package_sources() and not offences, offences


def _constant_script(node) -> bool:
    """A script path made of constants (render.BUILD_DIR and a fixed script name)."""
    if isinstance(node, ast.Constant):
        return True
    if isinstance(node, ast.JoinedStr):
        return all(
            isinstance(v, ast.Constant)
            or (
                isinstance(v, ast.FormattedValue)
                and (
                    (isinstance(v.value, ast.Attribute) and v.value.attr == "BUILD_DIR")
                    or isinstance(v.value, ast.Name)
                )
            )
            for v in node.values
        )
    return False


def test_the_only_shell_script_runs_fixed_scripts():
    """The build container runs `sh BUILD_DIR/<script>`, and the scripts are ours."""
    source = (PACKAGE / "backends" / "docker" / "environments.py").read_text()
    calls = re.findall(r'_build_container\([^)]*?"(\w+\.sh)"', source)
    assert sorted(set(calls)) == ["download.sh", "install.sh", "resolve.sh"]


apt_names = st.from_regex(r"\A[a-z0-9][a-z0-9+.-]{1,20}\Z")
requirement_names = st.from_regex(r"\A[A-Za-z][A-Za-z0-9._-]{0,15}[A-Za-z0-9]\Z")


@settings(max_examples=100, deadline=None)
@given(
    st.lists(apt_names, min_size=1, max_size=4),
    st.booleans(),
    st.booleans(),
    st.sampled_from(["pip", "uv"]),
    st.booleans(),
)
def test_build_script_holds_no_user_text(apt, has_requirements, from_lock, installer, remove):
    """The shell script is the same whatever the packages: their names reach apt, pip and uv
    only through files (apt.txt, requirements.txt, lock.txt, remove.txt)."""
    args = (has_requirements, from_lock, installer, remove)
    assert render.install_script(tuple(apt), *args) == render.install_script(
        ("placeholder",), *args
    )


@settings(max_examples=100, deadline=None)
@given(st.lists(apt_names, max_size=4))
def test_export_dockerfile_quotes_every_apt_name(apt):
    text = render.dockerfile(BASE, tuple(s.parse_apt(apt)))
    if apt:
        run = next(line for line in text.splitlines() if "apt-get install" in line)
        words = shlex.split(run.split("--no-install-recommends", 1)[1].split("\\")[0])
        assert words == sorted(set(apt))


# == Properties of the spec and requirement parsing ================================================

anything = st.one_of(
    st.text(max_size=30),
    st.text(alphabet=string.printable, max_size=30),
    st.from_regex(r"\A[0-9.eE+-]{1,12}[a-zA-Z]{0,4}\Z"),
)


def only_spec_errors(fn, value):
    """fn(value), or None when it raised SpecError; any other exception fails the test."""
    try:
        return fn(value)
    except SpecError as e:
        assert str(e) and "line None" not in str(e)
        return None


@settings(max_examples=300, deadline=None)
@given(anything)
def test_memory_is_a_size_docker_accepts_or_a_spec_error(text):
    value = only_spec_errors(s.parse_memory, text)
    if value is not None:
        assert isinstance(value, int) and value >= s.MIN_MEMORY


@settings(max_examples=200, deadline=None)
@given(st.integers(6, 10**6), st.sampled_from(["m", "M", "mb", "MiB", "g", "G", "gb", "GiB"]))
def test_memory_units(number, unit):
    factor = 2**30 if unit[0] in "gG" else 2**20
    assert s.parse_memory(f"{number}{unit}") == number * factor


@settings(max_examples=300, deadline=None)
@given(st.one_of(anything, st.floats(allow_nan=True, allow_infinity=True)))
def test_cpus_are_a_limit_docker_applies_or_a_spec_error(value):
    cpus = only_spec_errors(s.parse_cpus, value)
    if cpus is not None:
        assert s.MIN_CPUS <= cpus <= 1024
        assert int(cpus * 1e9) >= 10**7  # never 0 nanoCPUs, which Docker reads as no limit


@settings(max_examples=300, deadline=None)
@given(st.one_of(anything, st.floats(allow_nan=True, allow_infinity=True)))
def test_timeout_is_one_a_timer_can_keep_or_a_spec_error(value):
    timeout = only_spec_errors(s.parse_timeout, value)
    if timeout is not None:
        assert 0 < timeout <= threading.TIMEOUT_MAX


@settings(max_examples=300, deadline=None)
@given(st.one_of(anything, st.text(alphabet="0123456789²³¹٣৩", max_size=4)))
def test_gpus_are_all_or_a_count_or_a_spec_error(text):
    gpus = only_spec_errors(s.parse_gpus, text)
    if gpus is not None:
        assert gpus == "all" or int(gpus) > 0  # what backends/docker.py does with it


@settings(max_examples=200, deadline=None)
@given(anything)
def test_network_is_only_bridge_or_none(text):
    assert only_spec_errors(s.parse_network, text) in (None, "bridge", "none")


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(max_size=20), max_size=5))
def test_env_keys_are_names_and_values_are_kept_verbatim(items):
    pairs = only_spec_errors(s.parse_env, items)
    if pairs is None:
        return
    expected = {}
    for item in items:
        key, _, value = item.partition("=")
        expected[key] = value
    assert dict(pairs) == expected
    assert all(re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", k) for k, _ in pairs)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(max_size=15), max_size=4))
def test_apt_names_can_be_neither_options_nor_shell(names):
    got = only_spec_errors(s.parse_apt, names)
    if got is None:
        return
    for name in got:
        assert not name.startswith("-") and name == name.strip() and name.isascii()
        assert not set(name) & set(" \t\n;&|$`'\"\\<>()*?[]{}!#~")


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=30), st.sampled_from(["--in", "--out"]))
def test_identifiers_are_python_names_in_order(text, flag):
    got = only_spec_errors(lambda t: s.parse_identifiers(t, flag), text)
    if got is not None:
        assert all(n.isidentifier() and n.isascii() for n in got)
        assert len(set(got)) == len(got)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=200))
def test_requirements_file_text_gives_canonical_lines_or_a_spec_error(text):
    reqs = only_spec_errors(s.parse_requirements_text, text)
    if reqs is None:
        return
    for r in reqs:
        assert s.parse_requirement(r) == r
        assert not r.startswith("-") and "\n" not in r and "\r" not in r
    # What reaches requirements.txt is one line per requirement, nothing else.
    assert render.requirements_txt(reqs).splitlines() == reqs


# One of two projects, spelled as PEP 503 allows: any case, any run of '-', '_' and '.'.
spelled = st.builds(
    lambda parts, sep, upper, spec: (sep.join(parts).upper() if upper else sep.join(parts)) + spec,
    st.sampled_from([("foo", "bar"), ("x", "y2")]),
    st.sampled_from(["-", "_", ".", "__", "._", "-_-"]),
    st.booleans(),
    st.sampled_from(["", "==1.0", "==2.0", ">=1"]),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(spelled, max_size=5), st.randoms())
def test_merged_requirements_name_each_project_once_in_any_order(items, rnd):
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    reqs = [s.parse_requirement(item) for item in items]
    merged = only_spec_errors(s.merge_requirements, reqs)
    if merged is None:
        return
    names = [canonicalize_name(Requirement(r).name) for r in merged]
    assert len(names) == len(set(names))  # one pip line per project (PEP 503 names)
    shuffled = list(reqs)
    rnd.shuffle(shuffled)
    assert s.merge_requirements(shuffled) == merged


@settings(max_examples=200, deadline=None)
@given(st.from_regex(r"\A[a-z0-9]{1,8}\Z"), st.from_regex(r"\AZq[A-Za-z0-9%!$]{6,12}\Z"))
def test_requirement_urls_with_credentials_are_refused_without_echoing_them(user, password):
    text = f"six @ https://{user}:{password}@host.example/six-1.16.0-py3-none-any.whl"
    with pytest.raises(SpecError, match="credentials") as e:
        s.parse_requirement(text)
    assert password not in str(e.value)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=60))
def test_cell_syntax_check_raises_only_spec_errors(code):
    only_spec_errors(s.check_syntax, code)


path_part = st.from_regex(r"\A[a-z0-9]+(([._]|__|-+)[a-z0-9]+)?\Z")
image_refs = st.builds(
    lambda domain, parts, tag, digest: (
        (f"{domain}/" if domain else "")
        + "/".join(parts)
        + (f":{tag}" if tag else "")
        + (f"@sha256:{digest}" if digest else "")
    ),
    st.one_of(st.none(), st.sampled_from(["localhost:5000", "ghcr.io", "registry.example.com"])),
    st.lists(path_part, min_size=1, max_size=3),
    st.one_of(st.none(), st.from_regex(r"\A[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}\Z")),
    st.one_of(st.none(), st.from_regex(r"\A[0-9a-f]{64}\Z")),
)


@settings(max_examples=200, deadline=None)
@given(image_refs)
def test_valid_image_references_are_accepted(ref):
    assert s.EnvSpec(ref).base_image == ref


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=30))
def test_base_image_is_a_reference_or_a_spec_error(text):
    try:
        s.EnvSpec(text)
    except SpecError:
        return
    # Accepted: Docker's grammar has no room for whitespace, shell or upper case paths.
    assert text and not set(text) & set(" \t\n;&|$`'\"\\<>()*?!#~")
    assert (
        text.split("@")[0].rsplit("/", 1)[-1].split(":")[0]
        == text.split("@")[0].rsplit("/", 1)[-1].split(":")[0].lower()
    )


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["API_KEY", "token", "DB_PASSWORD", "MODE", "X"]),
            st.text(min_size=1, max_size=10),
        ),
        max_size=5,
    )
)
def test_secret_values_are_never_recorded(env):
    env = tuple(dict(env).items())
    spec = s.RunSpec("pass", s.EnvSpec(BASE), env=env)
    masked = spec.masked_env()
    for key, value in env:
        if s.looks_secret(key):
            assert masked[key] == "***"
        else:
            assert masked[key] == value


@settings(max_examples=200, deadline=None)
@given(st.lists(apt_names, max_size=4), st.lists(requirement_names, max_size=4), st.randoms())
def test_environment_key_ignores_order(apt, reqs, rnd):
    a = s.EnvSpec(BASE, tuple(apt), tuple(reqs))
    apt2, reqs2 = list(apt), list(reqs)
    rnd.shuffle(apt2)
    rnd.shuffle(reqs2)
    assert s.EnvSpec(BASE, tuple(apt2), tuple(reqs2)).key() == a.key()
