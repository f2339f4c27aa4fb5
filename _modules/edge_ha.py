"""
The ``edge_ha`` pillar model as Salt functions: validate, model, node view.

The model itself (validation, normalisation, per-node view) is plain Python
in ``edge_ha_core.model`` (``_utils/edge_ha_core/``), shared with the other
modules, the runner, the beacons and the tests. See ``docs/pillar.md`` for
every key.
"""

from edge_ha_core.model import ROOT
from edge_ha_core.model import normalize
from edge_ha_core.model import validate_model
from edge_ha_core.model import view_for_node

__virtualname__ = "edge_ha"

# Only these are Salt functions.
__load__ = ["validate", "model", "node_view"]


def __virtual__():
    return __virtualname__


# ---------------------------------------------------------------- Salt layer


def _pillar_data(pillar):
    if pillar is not None:
        return pillar.get(ROOT) if isinstance(pillar, dict) and ROOT in pillar else pillar
    return __pillar__.get(ROOT)  # pylint: disable=undefined-variable


def validate(pillar=None):
    """
    Validate the ``edge_ha`` pillar (or the given data) and return the list of
    errors; an empty list means it is valid.

    pillar
        Optional data to check instead of this minion's pillar: either the
        value of ``edge_ha`` or a mapping containing it.

    CLI Example:

    .. code-block:: bash

        salt-call edge_ha.validate
        salt '*' edge_ha.validate pillar='{"edge_ha": {"nodes": {}}}'
    """
    return validate_model(_pillar_data(pillar))


def model(pillar=None):
    """
    Return the normalised model (defaults filled in, priorities per node,
    ``auto`` real servers resolved). Raises an error listing every problem if
    the pillar is invalid.

    CLI Example:

    .. code-block:: bash

        salt-call edge_ha.model
        salt-run salt.cmd edge_ha.model pillar="$(cat edge.json)"
    """
    return normalize(_pillar_data(pillar))


def node_view(node=None, pillar=None, drained=None):
    """
    Return what ``node`` (default: this minion's id) renders from the model;
    ``drained`` lists nodes whose real servers get weight 0.

    CLI Example:

    .. code-block:: bash

        salt-call edge_ha.node_view
        salt-call edge_ha.node_view node=edge2
    """
    node = node or __opts__["id"]  # pylint: disable=undefined-variable
    if isinstance(drained, str):
        drained = [n for n in drained.split(",") if n]
    return view_for_node(model(pillar), node, drained or ())
