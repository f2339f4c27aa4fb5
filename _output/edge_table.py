"""
``--out=edge_table``: the VIP report as the text table.

.. code-block:: bash

    salt-run edge.vip_report --out=edge_table

Formats what ``edge.vip_report`` returns with an outputter set
(``{"vips": [...], "service": {...}, "notes": [...]}``, the same as
``--out=json``, with ``pillar_errors`` and ``stale_config`` where the runner
returns them) with ``edge_ha_core.report.format_report``: the table, then
the Service, the stale configs, the pillar errors and the planner's notes
under it, the runner's own text. Anything else is handed to the ``nested``
outputter.
"""

import importlib
import os
import sys

__virtualname__ = "edge_table"


def __virtual__():
    return __virtualname__


def _format_report():
    """``edge_ha_core.report.format_report``, imported when first needed.

    Installed as an extension, ``edge_ha_core`` is a top-level package. From a
    checkout (``module_dirs``) or synced to a minion (``extmods/output``), the
    core sits in the sibling ``_utils`` / ``utils`` directory, which Salt does
    not put on ``sys.path`` for outputters: try those too.
    """
    try:
        return importlib.import_module("edge_ha_core.report").format_report
    except ImportError:
        pass
    here = os.path.dirname(os.path.abspath(__file__))
    for sibling in ("_utils", "utils"):
        candidate = os.path.join(os.path.dirname(here), sibling)
        if os.path.isdir(os.path.join(candidate, "edge_ha_core")) and candidate not in sys.path:
            sys.path.append(candidate)
    return importlib.import_module("edge_ha_core.report").format_report


def _report(data):
    """The report inside ``data``: bare (salt-run) or under one minion id (salt-call)."""
    if isinstance(data, dict) and isinstance(data.get("vips"), list):
        return data
    if isinstance(data, dict) and len(data) == 1:
        (inner,) = data.values()
        if isinstance(inner, dict) and isinstance(inner.get("vips"), list):
            return inner
    return None


def output(data, **kwargs):  # pylint: disable=unused-argument
    report = _report(data)
    if report is None:
        return __salt__["nested"](data, **kwargs)  # pylint: disable=undefined-variable
    try:
        format_report = _format_report()
    except ImportError as exc:
        return f"edge_table: the table formatter is missing ({exc}); the report as returned:\n" + \
            __salt__["nested"](report, **kwargs)  # pylint: disable=undefined-variable
    return format_report(report)
