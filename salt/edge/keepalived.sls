# keepalived.managed validates before it touches anything, writes atomically,
# reloads only on change and rolls back if keepalived dies with the new file.
{%- from "edge/map.jinja" import edge_keepalived_unit as unit with context %}
{%- set settings = salt['keepalived.settings']() %}
{%- set service_mode = settings['service_mode'] %}
{%- set service_name = settings['service_name'] %}

{%- if service_mode == 'service' and salt['grains.get']('init') == 'systemd' %}
{#- The unit settings keepalived needs under systemd: the notify FIFO's state
    directory (a tmpfs /run is empty after a reboot, and keepalived does not
    create the FIFO's directory), and a keepalived that dies comes back. #}
edge-keepalived-unit:
  file.managed:
    - name: {{ unit.dropin_dir }}/{{ service_name }}.service.d/edge-ha.conf
    - makedirs: True
    - mode: '0644'
    - contents: |
        # Managed by salt-edge-ha (edge.keepalived): local changes are overwritten.
        [Service]
        ExecStartPre={{ unit.mkdir }} -p -m 0755 {{ settings['state_dir'] }}
        Restart={{ unit.restart }}
        RestartSec={{ unit.restart_sec }}
        RestartPreventExitStatus={{ unit.restart_prevent_exit_status }}
    - require:
      - edge-packages

edge-keepalived-daemon-reload:
  cmd.run:
    - name: systemctl daemon-reload
    - onchanges:
      - file: edge-keepalived-unit
{%- endif %}

edge-keepalived:
  keepalived.managed:
    - require:                    # by ID: under test=True edge.sysctl may preview them
      - edge-packages
      - edge-sysctl-nonlocal-bind
{%- if service_mode == 'service' and salt['grains.get']('init') == 'systemd' %}
      - edge-keepalived-unit
      - edge-keepalived-daemon-reload
{%- endif %}

{%- if service_mode == 'service' %}
edge-keepalived-enabled:
  service.enabled:
    - name: {{ service_name }}
    - require:
      - keepalived: edge-keepalived
{%- endif %}
