# keepalived.managed validates before it touches anything, writes atomically,
# reloads only on change and rolls back if keepalived dies with the new file.
edge-keepalived:
  keepalived.managed:
    - require:                    # by ID: under test=True edge.sysctl may preview them
      - edge-packages
      - edge-sysctl-nonlocal-bind

{%- if salt['config.get']('keepalived:service_mode', 'service') == 'service' %}
edge-keepalived-enabled:
  service.enabled:
    - name: {{ salt['config.get']('keepalived:service_name', 'keepalived') }}
    - require:
      - keepalived: edge-keepalived
{%- endif %}
