"""
salt-edge-ha as a Salt extension (``pip install saltext.edge_ha``, or
``salt-pip install`` on onedir Salt).

Salt's loader finds this package through the ``salt.loader`` entry point in
pyproject.toml and loads the sub-directories named after its loader types:
``modules``, ``states``, ``beacons``, ``runners``, ``output``, ``pillar``
and ``engines``. In the wheel they are the repository's ``_modules``,
``_states``, ``_beacons``, ``_runners``, ``_output``, ``_pillar`` and
``_engines`` (mapped by setuptools' ``package-dir``, not
copied in the repository); the pure core they import, ``edge_ha_core``, is
a top-level package of the same wheel.

The SLS tree, the reactor SLS, the example pillar and the master
configuration ship as data under ``files/``; ``python -m saltext.edge_ha``
prints a master.d snippet with their installed paths (see docs/install.md).

Keep this module cheap to import: the loader imports it every time it builds
a loader.
"""

import pathlib

from edge_ha_core.version import __version__  # noqa: F401  (re-exported)

PACKAGE_ROOT = pathlib.Path(__file__).resolve().parent
FILES = PACKAGE_ROOT / "files"


def paths():
    """Installed data paths: the SLS tree (a file root), the reactor SLS, the example pillar."""
    return {
        "file_root": str(FILES / "salt"),
        "reactor_sls": str(FILES / "reactor" / "edge_ha.sls"),
        "master_conf": str(FILES / "reactor" / "edge-ha.master.conf"),
        "pillar_example": str(FILES / "pillar" / "edge_ha.sls.example"),
    }
