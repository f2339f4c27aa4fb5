"""Load the repo's Salt module files as plain Python modules (no Salt loader)."""

import importlib.util
import pathlib
import sys

REPO = pathlib.Path(__file__).resolve().parents[2]
# the loader modules import the pure core (edge_ha_core), which Salt finds in _utils
if str(REPO / "_utils") not in sys.path:
    sys.path.insert(0, str(REPO / "_utils"))


def load(relpath, name=None):
    """Import e.g. ``_modules/edge_ha.py`` under a private module name."""
    path = REPO / relpath
    name = name or "edgeha_test_" + relpath.replace("/", "_").removesuffix(".py")
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod
