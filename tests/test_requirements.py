"""Capturing pins from what a cell imports, with the kernel's installed versions."""

from importlib import metadata

import pytest

from mlcontainer_magics.core.requirements import (
    capture_pins,
    closest_parent,
    extend_lock,
    imported_modules,
)


def test_imported_modules():
    code = (
        "import os, numpy as np\nfrom pandas.api import types\nfrom . import local\n"
        "def f():\n    import yaml.parser\n"
    )
    assert imported_modules(code) == ["os", "numpy", "pandas", "yaml"]


def test_capture_pins_uses_kernel_versions_and_respects_explicit():
    dists = {
        "IPython": ["ipython"],
        "numpy": ["numpy"],
        "yaml": ["PyYAML"],
        "six": ["six"],
        "nothere": ["nothere"],
    }
    installed = {"ipython": "9.0", "numpy": "1.26.4", "pyyaml": "6.0.1"}
    code = "import os, numpy, yaml, six, nothere, notamodule\nfrom IPython.display import HTML"
    pins = capture_pins(code, ["six==1.16.0"], installed=installed, module_dists=dists)
    assert pins == ["numpy==1.26.4", "pyyaml==6.0.1"]


def test_capture_pins_equal_the_kernels_installed_versions():
    """Against this very environment: what the kernel really has installed."""
    pins = capture_pins("import packaging, traitlets, json", [])
    assert pins == sorted(
        [
            f"packaging=={metadata.version('packaging')}",
            f"traitlets=={metadata.version('traitlets')}",
        ]
    )


def test_closest_parent_is_the_largest_strict_subset_with_the_same_apt():
    cands = [
        ("a", ["six==1.16.0"], []),
        ("b", ["idna==3.7", "six==1.16.0"], []),
        ("c", ["idna==3.7", "six==1.16.0"], ["curl"]),  # other Debian packages
        ("d", ["idna==3.6", "six==1.16.0"], []),  # another pin of idna
        ("e", ["idna==3.7", "six==1.16.0", "x==1"], []),
    ]  # the same as wanted: not a parent
    wanted = ["idna==3.7", "six==1.16.0", "x==1"]
    assert closest_parent(cands, wanted, []) == "b"
    assert closest_parent(cands, wanted, ["curl"]) == "c"
    assert closest_parent(cands, ["six==1.16.0"], []) is None  # nothing strictly smaller
    assert closest_parent(cands, ["idna==3.5", "six==1.16.0"], []) == "a"
    assert closest_parent([("z", [], [])], ["six==1.16.0"], []) is None  # the bare base


def test_extend_lock_keeps_the_parents_pins_and_takes_pips_changes():
    parent = [
        {"name": "numpy", "version": "1.26.4", "hashes": ["sha256:aa"]},
        {"name": "six", "version": "1.15.0", "hashes": []},
    ]
    installed = [
        {"name": "six", "version": "1.16.0", "hashes": ["sha256:bb"]},
        {"name": "idna", "version": "3.7", "hashes": []},
    ]
    assert [(e["name"], e["version"]) for e in extend_lock(parent, installed)] == [
        ("idna", "3.7"),
        ("numpy", "1.26.4"),
        ("six", "1.16.0"),
    ]


def test_lock_from_uv_compile_output():
    from mlcontainer_magics.core.requirements import lock_from_compiled

    text = (
        "numpy==1.26.4 \\\n    --hash=sha256:aa \\\n    --hash=sha256:bb\n"
        "    # from https://pypi.org/simple\n"
        "Torch==2.13.0+cpu \\\n    --hash=sha256:cc\n    # from file:///mlc-host/opt/wheels\n"
        "six==1.16.0 ; python_version >= '3' \\\n    --hash=sha256:dd\n"
    )
    lock, sources = lock_from_compiled(text)
    assert lock == [
        {"name": "numpy", "version": "1.26.4", "hashes": ["sha256:aa", "sha256:bb"]},
        {"name": "six", "version": "1.16.0", "hashes": ["sha256:dd"]},
        {"name": "torch", "version": "2.13.0+cpu", "hashes": ["sha256:cc"]},
    ]
    assert sources == {"numpy": "https://pypi.org/simple", "torch": "file:///mlc-host/opt/wheels"}
    with pytest.raises(ValueError, match="exact pin"):
        lock_from_compiled("numpy>=1\n")


def test_closest_locked_parent_shares_the_most_pins():
    from mlcontainer_magics.core.requirements import closest_locked_parent

    def lock(**pins):
        return [{"name": n, "version": v} for n, v in pins.items()]

    sk14 = lock(numpy="1", scipy="1", sklearn="1.4", joblib="1")
    tiny = lock(numpy="1")
    other = lock(requests="2", urllib3="2", idna="3")
    want = lock(numpy="1", scipy="1", sklearn="1.5", joblib="1")
    cands = [("tiny", tiny, []), ("sk14", sk14, []), ("other", other, [])]
    assert closest_locked_parent(cands, want, []) == "sk14"
    # other Debian packages, or more to remove than is shared: not a parent
    assert closest_locked_parent([("sk14", sk14, ["tesseract-ocr"])], want, []) is None
    assert closest_locked_parent([("other", other + tiny, [])], lock(numpy="1"), []) is None
    assert closest_locked_parent([], want, []) is None


def test_guess_locked_parent_goes_by_the_requirements_pins_then_names():
    from mlcontainer_magics.core.requirements import guess_locked_parent

    def lock(**pins):
        return [{"name": n.replace("_", "-"), "version": v} for n, v in pins.items()]

    sk14 = lock(numpy="1.26.4", scipy="1.13", scikit_learn="1.4.2", joblib="1")
    sk15 = lock(numpy="1.26.4", scipy="1.13", scikit_learn="1.5.2", joblib="1")
    tiny = lock(numpy="2.0")
    cands = [("tiny", tiny, []), ("sk14", sk14, []), ("sk15", sk15, [])]
    # the most exact pins: scikit-learn 1.5.2 (any spelling of its name) and numpy
    assert guess_locked_parent(cands, ["numpy==1.26.4", "Scikit_Learn==1.5.2"], []) == "sk15"
    # no pin matches: the most names, then the fewest packages
    assert guess_locked_parent(cands, ["numpy"], []) == "tiny"
    assert guess_locked_parent(cands, ["numpy", "joblib>=1"], []) == "sk14"
    # other Debian packages, no name in common, nothing to guess from: none
    assert guess_locked_parent([("sk14", sk14, ["tesseract-ocr"])], ["numpy"], []) is None
    assert guess_locked_parent(cands, ["requests==2.32.3"], []) is None
    assert guess_locked_parent(cands, ["not a requirement ("], []) is None
