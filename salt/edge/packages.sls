# What the edge states run: keepalived, ipvsadm, ip, nft, and the commands of
# Salt's own kmod and sysctl states (lsmod/modprobe, sysctl). Names per OS
# family: edge/map.jinja.
{%- from "edge/map.jinja" import edge_packages with context %}
edge-packages:
  pkg.installed:
    - pkgs:
{%- for key in ('keepalived', 'ipvsadm', 'iproute', 'nftables', 'kmod', 'sysctl') %}
      - {{ edge_packages[key] }}
{%- endfor %}
