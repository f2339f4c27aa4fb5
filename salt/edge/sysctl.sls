# Services on the edge nodes may bind the VIP before this node holds it.
{%- set sysctl_file = salt['config.get']('edge_ha_sysctl_file', '/etc/sysctl.d/60-edge-ha.conf') %}
edge-sysctl-nonlocal-bind:
  sysctl.present:
    - name: net.ipv4.ip_nonlocal_bind
    - value: 1
    - config: {{ sysctl_file }}

{#- Direct routing: real servers hold the VIP without answering ARP for it. #}
{%- set servers = salt['pillar.get']('edge_ha:virtual_servers', {}) %}
{%- if servers.values() | selectattr('lb_kind', 'defined') | selectattr('lb_kind', 'equalto', 'DR') | list %}
{%- for key, value in [('net.ipv4.conf.all.arp_ignore', 1), ('net.ipv4.conf.all.arp_announce', 2)] %}
edge-sysctl-{{ key }}:
  sysctl.present:
    - name: {{ key }}
    - value: {{ value }}
    - config: {{ sysctl_file }}
{%- endfor %}
{%- endif %}

{#- IPVS (keepalived virtual_servers): when a real server is removed, or drained
    to weight 0, its connections and persistence templates expire instead of
    pinning clients to it until persistence_timeout runs out. #}
{%- if servers %}
edge-ipvs-module:
  kmod.present:
    - name: ip_vs
{%- for key in ('net.ipv4.vs.expire_nodest_conn', 'net.ipv4.vs.expire_quiescent_template') %}
edge-sysctl-{{ key }}:
  sysctl.present:
    - name: {{ key }}
    - value: 1
    - config: {{ sysctl_file }}
    - require:
      - kmod: edge-ipvs-module
{%- endfor %}
{%- endif %}
