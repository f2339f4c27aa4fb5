edge-packages:
  pkg.installed:
    - pkgs:
      - keepalived
      - ipvsadm
      - iproute2
