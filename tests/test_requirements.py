"""Capturing pins from what a cell imports, with the kernel's installed versions."""

from importlib import metadata

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
