# Edge nodes are the minions named in the edge_ha:nodes pillar.
base:
{%- if grains['id'] in salt['pillar.get']('edge_ha:nodes', {}) %}
  '{{ grains['id'] }}':
    - edge
{%- endif %}
