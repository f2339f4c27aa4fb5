"""
Manage keepalived on an edge node from the ``edge_ha`` pillar.

.. code-block:: yaml

    keepalived-config:
      keepalived.managed: []

``keepalived.managed`` renders this node's keepalived.conf, validates it (the
pillar model, then ``keepalived -t``), installs the notify script that records
VRRP transitions, writes the config atomically (temp file + rename, the
previous file kept as ``<config_file>.bak``), reloads keepalived only when the
content changed, and makes sure keepalived runs. If keepalived is not running
after the reload (or start), the previous file is restored and loaded again,
and the state fails saying so.

With ``test=True`` it returns ``result: None`` and the unified diff; nothing is
written. Diffs show ``auth_pass ********``, never the password (state returns
land in the job cache). The config and its ``.bak``/``.failed`` copies are
written with mode 0600, and keepalived's own config test (``keepalived -t``)
passes before every reload. An invalid pillar gives ``result: False`` with every error in the
comment; the config file and the running daemon are not touched.
"""

import logging

from salt.exceptions import CommandExecutionError
from salt.exceptions import SaltInvocationError

__virtualname__ = "keepalived"
log = logging.getLogger(__name__)


def __virtual__():
    if "keepalived.plan" in __salt__:  # pylint: disable=undefined-variable
        return __virtualname__
    return (False, "keepalived state: the keepalived execution module is not available")


def managed(name="keepalived", node=None, template=None):
    """
    Render, validate, write and (re)load keepalived for this edge node.

    name
        An ID for the state; the config path comes from the node settings
        (``keepalived:config_file``, see the execution module).

    node
        The node of ``edge_ha:nodes`` to render for (default: the minion id).

    template
        Optional ``salt://`` Jinja template replacing the built-in one.

    CLI Example:

    .. code-block:: bash

        salt-call state.single keepalived.managed name=keepalived test=True
    """
    ret = {"name": name, "result": False, "changes": {}, "comment": ""}
    mod = __salt__  # pylint: disable=undefined-variable
    try:
        plan = mod["keepalived.plan"](node=node, template=template)
    except (CommandExecutionError, SaltInvocationError) as exc:
        ret["comment"] = f"{exc}\nnothing changed"
        return ret
    if not plan["valid"]:
        ret["comment"] = "\n  ".join(plan["errors"]) + "\nnothing changed"
        return ret

    path = plan["config_file"]
    changes = {}
    if plan["changed"]:
        changes["config"] = plan["diff"]  # auth_pass masked: state returns land in the job cache
    if not plan["notify_script_current"]:
        changes["notify_script"] = "installed"
    if not plan["running"]:
        changes["service"] = "started"
    elif plan.get("restart_needed"):
        changes["service"] = f"restarted ({plan['restart_reason']})"
    elif plan["changed"]:
        changes["service"] = "reloaded"

    if not changes:
        ret.update(result=True, comment=f"{path} is up to date and keepalived is running")
        return ret
    if __opts__["test"]:  # pylint: disable=undefined-variable
        ret.update(
            result=None,
            changes=changes,
            comment="keepalived would be updated: " + ", ".join(sorted(changes)),
        )
        return ret

    try:
        mod["keepalived.install_notify_script"]()
        if plan["changed"]:
            # renders and checks again, and writes only the config planned above (mode 0600, .bak kept)
            mod["keepalived.write_rendered"](node=node, template=template, expected_hash=plan["new_hash"])
        if plan["running"] and plan.get("restart_needed"):
            mod["keepalived.stop"]()
            alive = mod["keepalived.start"]()
        elif plan["running"]:
            alive = mod["keepalived.reload"]() if plan["changed"] else True
        else:
            alive = mod["keepalived.start"]()
        if not alive:
            msg = f"keepalived is not running after loading the new {path}"
            if plan["old_hash"] and plan["changed"]:
                # the previous file (.bak) goes back and is loaded; the new one is kept as .failed
                back = mod["keepalived.rollback"]()
                msg += "; the previous config was restored and " + (
                    "keepalived runs with it again" if back["running"] else "keepalived does not run with it either"
                )
            tail = mod["keepalived.log_tail"]()
            ret["comment"] = msg + ("\n" + tail if tail else "")
            return ret
    except (CommandExecutionError, SaltInvocationError, OSError) as exc:
        ret["comment"] = f"failed to apply the keepalived config: {exc}"
        return ret
    ret.update(result=True, changes=changes, comment="keepalived updated: " + ", ".join(sorted(changes)))
    _publish(mod)
    return ret


def _publish(mod):
    """The node's report to the master's mine now (the staged reload waits for it); never fails the state."""
    if "edge_node.publish" not in mod:
        return
    try:
        mod["edge_node.publish"](force=True, wait=True)
    except Exception as exc:  # pylint: disable=broad-except
        log.debug("keepalived.managed: report not published: %s", exc)
