"""The pure spec: validation of everything a user types, before any work."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mlcontainer_magics.core import spec as s
from mlcontainer_magics.errors import SpecError


def test_requirement_canonical_form():
    assert s.parse_requirement(" six == 1.16.0 ") == "six==1.16.0"
    assert s.parse_requirement("pandas>=2,<3") == "pandas<3,>=2"


@pytest.mark.parametrize("bad", ["numpy==", "==1.0", "numpy>>1", "nu mpy", "numpy[", ""])
def test_invalid_requirement_says_what_to_do(bad):
    with pytest.raises(SpecError, match="PEP 508"):
        s.parse_requirement(bad)


def test_requirement_with_local_path_is_refused():
    with pytest.raises(SpecError, match="cannot reach"):
        s.parse_requirement("pkg @ file:///home/me/pkg")


def test_requirements_file_text():
    text = "# comment\nsix==1.16.0  # pinned\n\nnumpy<2\n"
    assert s.parse_requirements_text(text) == ["six==1.16.0", "numpy<2"]
    with pytest.raises(SpecError, match="line 2"):
        s.parse_requirements_text("six\nbad==\n", source="r.txt")
    with pytest.raises(SpecError, match="pip options"):
        s.parse_requirements_text("--index-url https://x\n")


def test_merge_requirements_dedupes_and_rejects_conflicts():
    assert s.merge_requirements(["six==1.16.0", "six==1.16.0", "Numpy<2"]) == (
        "Numpy<2",
        "six==1.16.0",
    )
    with pytest.raises(SpecError, match="required twice"):
        s.merge_requirements(["six==1.16.0", "six==1.15.0"])


@pytest.mark.parametrize(
    "text,value",
    [("512m", 512 * 2**20), ("2g", 2 * 2**30), ("1.5GiB", int(1.5 * 2**30)), ("7000000", 7000000)],
)
def test_memory(text, value):
    assert s.parse_memory(text) == value


@pytest.mark.parametrize("bad", ["lots", "-1m", "1x", "", "5m"])
def test_bad_memory(bad):
    with pytest.raises(SpecError, match="--memory"):
        s.parse_memory(bad)


@pytest.mark.parametrize("bad", ["-1", "0", "nan", "inf", "two", None])
def test_bad_cpus(bad):
    with pytest.raises(SpecError, match="--cpus"):
        s.parse_cpus(bad)


@pytest.mark.parametrize("bad", ["0", "-5", "soon", "inf"])
def test_bad_timeout(bad):
    with pytest.raises(SpecError, match="--timeout"):
        s.parse_timeout(bad)


def test_gpus_network_env_name_apt():
    assert s.parse_gpus("all") == "all" and s.parse_gpus("2") == "2"
    with pytest.raises(SpecError):
        s.parse_gpus("0")
    with pytest.raises(SpecError, match="bridge, none"):
        s.parse_network("host")
    assert s.parse_env(["A=1", "B=x=y", "A=2"]) == (("A", "2"), ("B", "x=y"))
    with pytest.raises(SpecError, match="KEY=VALUE"):
        s.parse_env(["NOVALUE"])
    with pytest.raises(SpecError, match="Name"):
        s.parse_name("bad;rm -rf /")
    assert s.parse_apt(["tesseract-ocr", "g++", "libc6=2.36-9"]) == (
        "g++",
        "libc6=2.36-9",
        "tesseract-ocr",
    )
    with pytest.raises(SpecError, match="Debian package"):
        s.parse_apt(["Bad Name"])


def test_syntax_error_points_at_the_line():
    with pytest.raises(SpecError, match="line 2") as e:
        s.check_syntax("x = 1\nif x\n  pass\n")
    assert "nothing was built" in str(e.value)
    s.check_syntax("x = 1\nx")  # valid code passes


def test_env_key_ignores_order_and_depends_on_content():
    a = s.EnvSpec("python:3.11-slim", ("b", "a"), ("six==1.16.0", "numpy<2"))
    b = s.EnvSpec("python:3.11-slim", ("a", "b"), ("numpy<2", "six==1.16.0"))
    c = s.EnvSpec("python:3.11-slim", ("a", "b"), ("numpy<2", "six==1.15.0"))
    assert a.key() == b.key() != c.key()


def test_masked_env():
    spec = s.RunSpec(
        "x=1",
        s.EnvSpec("b"),
        env=(("API_TOKEN", "abc"), ("MODE", "fast"), ("PLAIN", "p")),
        secret_env=frozenset({"PLAIN"}),
    )
    assert spec.masked_env() == {"API_TOKEN": "***", "MODE": "fast", "PLAIN": "***"}


@given(st.text(max_size=40))
def test_parse_name_accepts_only_safe_names(text):
    try:
        name = s.parse_name(text)
    except SpecError:
        return
    assert name == text and all(c.isalnum() or c in "_.-" for c in name) and name[0].isalnum()


@given(st.text(max_size=60))
def test_parse_requirement_never_crashes_with_another_error(text):
    try:
        out = s.parse_requirement(text)
    except SpecError:
        return
    assert s.parse_requirement(out) == out  # canonical form is a fixed point


@given(
    st.lists(st.sampled_from(["ALPHA", "B_2", "c"]), max_size=5),
    st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=10),
)
def test_parse_env_round_trip(keys, value):
    pairs = s.parse_env([f"{k}={value}" for k in keys])
    assert dict(pairs) == dict.fromkeys(keys, value)


@pytest.mark.parametrize(
    "make",
    [
        lambda: s.EnvSpec("python:3.11-slim\n"),
        lambda: s.parse_apt(["curl\n"]),
        lambda: s.parse_name("a\n"),
        lambda: s.parse_env(["KEY\n=1"]),
        lambda: s.parse_secret_names(["TOKEN\n"]),
    ],
)
def test_a_trailing_newline_is_not_part_of_a_valid_name(make):
    # `$` matches before a final newline: every such check must take the whole text
    with pytest.raises(SpecError):
        make()


# -- --serve ------------------------------------------------------------------------------------


def _served(**fields):
    return s.RunSpec(
        code="def predict(x): return x", env_spec=s.EnvSpec("python:3.11-slim"), **fields
    )


def test_serve_flags_become_a_serve_spec():
    assert s.parse_serve(None) is None
    assert s.parse_serve("ocr") == s.ServeSpec("ocr", "predict", None, 1)
    assert s.parse_serve("ocr", port="8000", entry="read", replicas="3") == s.ServeSpec(
        "ocr", "read", 8000, 3
    )


@pytest.mark.parametrize(
    "kwargs,words",
    [
        ({"name": "no spaces"}, "Name"),
        ({"name": "m", "port": "0"}, r"--port '0': use a number from 1 to 65535"),
        ({"name": "m", "port": "http"}, "--port 'http' is not a whole number"),
        ({"name": "m", "port": "70000"}, "--port"),
        ({"name": "m", "entry": "my-fn"}, "--entry 'my-fn' is not a Python function name"),
        ({"name": "m", "replicas": "0"}, "--replicas"),
        ({"name": None, "port": "8000", "replicas": "2"}, "--port, --replicas: only with --serve"),
    ],
)
def test_bad_serve_flags_say_what_to_do(kwargs, words):
    with pytest.raises(SpecError, match=words):
        s.parse_serve(kwargs.pop("name"), **kwargs)


@pytest.mark.parametrize(
    "fields,words",
    [
        ({"session": "warm"}, "--serve and --session do not go together"),
        ({"outputs": ("y",)}, "--out does not go with --serve"),
    ],
)
def test_a_served_spec_refuses_what_a_service_cannot_have(fields, words):
    with pytest.raises(SpecError, match=words):
        _served(serve=s.ServeSpec("m"), **fields)
    _served(**fields)  # the same without --serve is fine


def test_a_served_spec_may_have_no_network():
    # Whether its backend can serve so is the backend's to say (core.services.services_of).
    spec = _served(serve=s.ServeSpec("m"), network="none")
    assert spec.network == "none" and spec.serve == s.ServeSpec("m")


def test_the_serve_block_of_the_manifest_names_the_snapshot_and_its_lock():
    lock = [{"name": "six", "version": "1.16.0", "hashes": ["sha256:abc"]}]
    block = s.serve_manifest(s.ServeSpec("m", "run"), "abc123", lock)
    assert block == {
        "name": "m",
        "entry": "run",
        "snapshot": "abc123",
        "lock_digest": "sha256:" + s.digest(lock),
    }
    assert (
        s.serve_manifest(s.ServeSpec("m"), "x", lock)["lock_digest"]
        != s.serve_manifest(s.ServeSpec("m"), "x", lock[:0])["lock_digest"]
    )
    spec = _served(serve=s.ServeSpec("m", port=9000))
    assert spec.to_dict()["serve"] == {"name": "m", "entry": "predict", "port": 9000, "replicas": 1}
