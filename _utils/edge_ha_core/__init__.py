"""
salt-edge-ha's pure core: the pillar model, the fleet's view of who holds
which VIP, the planner, the report. Plain Python, no Salt loader: execution
modules, states and runners import it (Salt puts the ``_utils`` directories
on ``sys.path`` while it loads them; ``saltutil.sync_all`` ships it to
minions as ``extmods/utils/edge_ha_core``), and so do the beacons and tests.

Nothing is imported here: Salt's utils loader may load this package under
its own name too, and must find nothing to run.
"""
