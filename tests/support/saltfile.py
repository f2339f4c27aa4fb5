"""Which of the repository's Saltfiles the installed Salt reads (see README: Salt versions)."""

import pathlib

import salt.version

REPO = pathlib.Path(__file__).resolve().parents[2]


def saltfile():
    """``Saltfile`` on Salt 3008 and later (file_root/pillar_root lists), ``Saltfile-3006-3007`` before (strings)."""
    if salt.version.__saltstack_version__.major >= 3008:
        return REPO / "Saltfile"
    return REPO / "Saltfile-3006-3007"


def saltfile_args():
    """salt-call arguments that select it (none on 3008: salt-call reads ./Saltfile from the repo root)."""
    path = saltfile()
    return [] if path.name == "Saltfile" else ["--saltfile", str(path)]
