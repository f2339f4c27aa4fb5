# keepalived.managed validates before it touches anything, writes atomically,
# reloads only on change and rolls back if keepalived dies with the new file.
{%- from "edge/map.jinja" import edge_keepalived_unit as unit with context %}
{%- set settings = salt['keepalived.settings']() %}
{%- set service_mode = settings['service_mode'] %}
{%- set service_name = settings['service_name'] %}

{%- if service_mode == 'service' and salt['grains.get']('init') == 'systemd' %}
{%- set custom_config = settings['config_file'] != unit.default_config_file %}
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

{#- keepalived:config_file other than the packaged unit's: the unit is made to
    read it. A running keepalived reads the file named on its command line
    again at each reload: keepalived.managed restarts one that reads another
    file than keepalived:config_file (instead of a reload). #}
edge-keepalived-unit-config-file:
{%- if custom_config %}
  file.managed:
    - name: {{ unit.dropin_dir }}/{{ service_name }}.service.d/edge-ha-config-file.conf
    - makedirs: True
    - mode: '0644'
    - contents: |
        # Managed by salt-edge-ha (edge.keepalived, keepalived:config_file): local changes are overwritten.
        [Unit]
        ConditionFileNotEmpty=
        ConditionFileNotEmpty={{ settings['config_file'] }}
        [Service]
        ExecStart=
        ExecStart={{ unit.exec_start }} -f {{ settings['config_file'] }}
    - require:
      - edge-packages
{%- else %}
  file.absent:
    - name: {{ unit.dropin_dir }}/{{ service_name }}.service.d/edge-ha-config-file.conf
{%- endif %}

edge-keepalived-daemon-reload:
  cmd.run:
    - name: systemctl daemon-reload
    - onchanges:
      - file: edge-keepalived-unit
      - file: edge-keepalived-unit-config-file
{%- endif %}

edge-keepalived:
  keepalived.managed:
    - require:                    # by ID: under test=True edge.sysctl may preview them
      - edge-packages
      - edge-sysctl-nonlocal-bind
{%- if service_mode == 'service' and salt['grains.get']('init') == 'systemd' %}
      - edge-keepalived-unit
      - edge-keepalived-unit-config-file
      - edge-keepalived-daemon-reload
{%- endif %}

{%- if service_mode == 'service' %}
edge-keepalived-enabled:
  service.enabled:
    - name: {{ service_name }}
    - require:
      - keepalived: edge-keepalived
{%- endif %}
