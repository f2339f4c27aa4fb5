# Copy edge_ha.sls.example to edge_ha.sls and adapt it; it is picked up here
# as soon as it exists.
{%- set ns = namespace(found=false) %}
{%- for root in opts['pillar_roots']['base'] %}
{%- if salt['file.file_exists'](root ~ '/edge_ha.sls') %}{% set ns.found = true %}{% endif %}
{%- endfor %}
base:
  '*': {{ ['edge_ha'] if ns.found else [] }}
