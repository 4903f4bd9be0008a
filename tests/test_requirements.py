"""Capturing pins from what a cell imports, with the kernel's installed versions."""
from importlib import metadata

from mlcontainer_magics.requirements import capture_pins, imported_modules


def test_imported_modules():
    code = ("import os, numpy as np\nfrom pandas.api import types\nfrom . import local\n"
            "def f():\n    import yaml.parser\n")
    assert imported_modules(code) == ["os", "numpy", "pandas", "yaml"]


def test_capture_pins_uses_kernel_versions_and_respects_explicit():
    dists = {"IPython": ["ipython"], "numpy": ["numpy"], "yaml": ["PyYAML"], "six": ["six"], "nothere": ["nothere"]}
    installed = {"ipython": "9.0", "numpy": "1.26.4", "pyyaml": "6.0.1"}
    code = "import os, numpy, yaml, six, nothere, notamodule\nfrom IPython.display import HTML"
    pins = capture_pins(code, ["six==1.16.0"], installed=installed, module_dists=dists)
    assert pins == ["numpy==1.26.4", "pyyaml==6.0.1"]


def test_capture_pins_equal_the_kernels_installed_versions():
    """Against this very environment: what the kernel really has installed."""
    pins = capture_pins("import packaging, traitlets, json", [])
    assert pins == sorted([f"packaging=={metadata.version('packaging')}",
                           f"traitlets=={metadata.version('traitlets')}"])
