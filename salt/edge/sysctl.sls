# Services on the edge nodes may bind the VIP before this node holds it.
{%- from "edge/map.jinja" import edge_packages, edge_commands with context %}
{%- set sysctl_file = salt['config.get']('edge_ha_sysctl_file', '/etc/sysctl.d/60-edge-ha.conf') %}

{#- state.apply test=True on a node edge.packages has not set up yet: the
    packages are only "would install", and sysctl.present / kmod.present
    would fail for the missing sysctl / lsmod commands. Those states say what
    they would do instead (a real run installs the packages first: require). #}
{%- set missing = {} %}
{%- if opts.get('test') %}
{%- for key, command in edge_commands | dictsort if not salt['cmd.which'](command) %}
{%- do missing.update({key: edge_packages[key]}) %}
{%- endfor %}
{%- endif %}

{%- macro absent(needs) -%}
{%- for need in needs if need in missing %}{{ missing[need] }}{{ ', ' if not loop.last }}{% endfor -%}
{%- endmacro %}

{%- macro preview(state_id, text, needs) %}
{{ state_id }}:
  test.show_notification:
    - text: "would {{ text }} (not checked: test=True, and {{ absent(needs) }} from edge-packages not installed yet)"
{%- endmacro %}

{%- macro sysctl(state_id, key, value, require, needs=('sysctl',)) %}
{%- if absent(needs) %}
{{- preview(state_id, 'set ' ~ key ~ ' = ' ~ value ~ ' in ' ~ sysctl_file, needs) }}
{%- else %}
{{ state_id }}:
  sysctl.present:
    - name: {{ key }}
    - value: {{ value }}
    - config: {{ sysctl_file }}
    - require:
      - {{ require }}
{%- endif %}
{%- endmacro %}

include:
  - edge.packages

{{ sysctl('edge-sysctl-nonlocal-bind', 'net.ipv4.ip_nonlocal_bind', 1, 'edge-packages') }}

{#- Direct routing: real servers hold the VIP without answering ARP for it. #}
{%- set servers = salt['pillar.get']('edge_ha:virtual_servers', {}) %}
{%- if servers.values() | selectattr('lb_kind', 'defined') | selectattr('lb_kind', 'equalto', 'DR') | list %}
{%- for key, value in [('net.ipv4.conf.all.arp_ignore', 1), ('net.ipv4.conf.all.arp_announce', 2)] %}
{{ sysctl('edge-sysctl-' ~ key, key, value, 'edge-packages') }}
{%- endfor %}
{%- endif %}

{#- IPVS (keepalived virtual_servers): when a real server is removed, or drained
    to weight 0, its connections and persistence templates expire instead of
    pinning clients to it until persistence_timeout runs out. The net.ipv4.vs
    keys exist once ip_vs is loaded. #}
{%- if servers %}
{%- if absent(['kmod']) %}
{{ preview('edge-ipvs-module', 'load the kernel module ip_vs', ['kmod']) }}
{%- else %}
edge-ipvs-module:
  kmod.present:
    - name: ip_vs
    - require:
      - edge-packages
{%- endif %}
{%- for key in ('net.ipv4.vs.expire_nodest_conn', 'net.ipv4.vs.expire_quiescent_template') %}
{{ sysctl('edge-sysctl-' ~ key, key, 1, 'edge-ipvs-module', ('sysctl', 'kmod')) }}
{%- endfor %}
{%- endif %}
