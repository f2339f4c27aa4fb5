# Beacon event from an edge node -> hand off to the runner, asynchronously.
# The event is only a hint: edge.trigger ignores claimed ids that are not edge
# nodes, waits until the node's report in the mine (stored by Salt under the
# minion's verified id) is the one the event names (``report``), and
# edge.reconcile acts only on the reports in the mine. ``stamp`` (when the event
# reached this master's bus) lets edge.trigger skip an event that a reconcile
# begun after it has already seen (a burst the reactor hands over late).
edge_ha_reconcile:
  runner.edge.trigger:
    - args:
      - source: {{ tag | json }}
      - claimed_id: {{ data.get('id', '') | string | json }}
      - event_time: {{ data.get('time', 0) | float }}
      - report: {{ data.get('report') | string | truncate(64) | json }}
      - seen: {{ data.get('seen', 0) | float }}
      - stamp: {{ data.get('_stamp', '') | string | truncate(40) | json }}
{%- if tag.endswith('/vrrp/transition') %}
      - transition: {{ {'instance': data.get('instance'), 'old': data.get('old'), 'new': data.get('new')} | json }}
{%- endif %}
