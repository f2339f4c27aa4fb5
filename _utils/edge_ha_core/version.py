"""salt-edge-ha's version: one place, read by pyproject.toml (the wheel's
metadata) and by ``saltext.edge_ha.__version__``. Bump it with a CHANGELOG.md
entry."""

__version__ = "0.1.0"
