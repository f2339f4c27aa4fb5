edge-packages:
  pkg.installed:
    - pkgs:
      - keepalived
      - ipvsadm
      - iproute2
      - nftables                  # edge.drain holds new connections back (edge_node.quiesce)
