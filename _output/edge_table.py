"""
``--out=edge_table``: the VIP report as the text table.

.. code-block:: bash

    salt-run edge.vip_report --out=edge_table

Formats what ``edge.vip_report`` returns with an outputter set
(``{"vips": [...], "service": {...}, "notes": [...]}``, the same as
``--out=json``, with ``pillar_errors`` and ``stale_config`` where the runner
returns them) with ``edge_ha_core.report.format_table``, then the Service,
the stale configs, the pillar errors and the planner's notes under it, as
the runner's own text. Anything else is handed to the ``nested``
outputter.
"""

import importlib
import os
import sys

__virtualname__ = "edge_table"


def __virtual__():
    return __virtualname__


def _format_table():
    """``edge_ha_core.report.format_table``, imported when first needed.

    Installed as an extension, ``edge_ha_core`` is a top-level package. From a
    checkout (``module_dirs``) or synced to a minion (``extmods/output``), the
    core sits in the sibling ``_utils`` / ``utils`` directory, which Salt does
    not put on ``sys.path`` for outputters: try those too.
    """
    try:
        return importlib.import_module("edge_ha_core.report").format_table
    except ImportError:
        pass
    here = os.path.dirname(os.path.abspath(__file__))
    for sibling in ("_utils", "utils"):
        candidate = os.path.join(os.path.dirname(here), sibling)
        if os.path.isdir(os.path.join(candidate, "edge_ha_core")) and candidate not in sys.path:
            sys.path.append(candidate)
    return importlib.import_module("edge_ha_core.report").format_table


def _report(data):
    """The report inside ``data``: bare (salt-run) or under one minion id (salt-call)."""
    if isinstance(data, dict) and isinstance(data.get("vips"), list):
        return data
    if isinstance(data, dict) and len(data) == 1:
        (inner,) = data.values()
        if isinstance(inner, dict) and isinstance(inner.get("vips"), list):
            return inner
    return None


def render(report, format_table):
    """The table, then the Service's externalIPs line and the notes (as ``edge.vip_report`` prints them)."""
    text = format_table(report["vips"])
    service = report.get("service") or {}
    if service.get("error"):
        text += f"\nservice: {service['error']}"
    elif service.get("match") is False:
        text += f"\nservice externalIPs: {service.get('current')}, should be {service.get('desired')}"
    if report.get("stale_config"):
        text += f"\nconfig: {', '.join(report['stale_config'])} not yet running the desired keepalived config"
    if report.get("pillar_errors"):
        text += "\npillar: edge_ha is INVALID; the last good model stays in force until it is fixed:"
        text += "".join(f"\n  {e}" for e in report["pillar_errors"])
    for note in report.get("notes") or []:
        text += f"\nnote: {note}"
    return text


def output(data, **kwargs):  # pylint: disable=unused-argument
    report = _report(data)
    if report is None:
        return __salt__["nested"](data, **kwargs)  # pylint: disable=undefined-variable
    try:
        format_table = _format_table()
    except ImportError as exc:
        return f"edge_table: the table formatter is missing ({exc}); the report as returned:\n" + \
            __salt__["nested"](report, **kwargs)  # pylint: disable=undefined-variable
    return render(report, format_table)
