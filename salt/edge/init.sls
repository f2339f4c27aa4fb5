# An edge node: packages, kernel settings, keepalived rendered from the
# edge_ha pillar. Works masterless (salt-call --local, see the Saltfile) and
# from a master.
include:
  - edge.packages
  - edge.sysctl
  - edge.keepalived
