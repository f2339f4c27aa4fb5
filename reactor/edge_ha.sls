# Beacon event from an edge node -> hand off to the runner, asynchronously.
# The event is only a hint: edge.trigger ignores claimed ids that are not edge
# nodes, and edge.reconcile re-reads every node through Salt job returns
# before it changes anything.
edge_ha_reconcile:
  runner.edge.trigger:
    - args:
      - source: {{ tag | json }}
      - claimed_id: {{ data.get('id', '') | string | json }}
      - event_time: {{ data.get('time', 0) | float }}
{%- if tag.endswith('/vrrp/transition') %}
      - transition: {{ {'instance': data.get('instance'), 'old': data.get('old'), 'new': data.get('new')} | json }}
{%- endif %}
