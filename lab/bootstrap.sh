#!/usr/bin/env bash
# Prepare a fresh machine for `make test` / `make demo`: Debian packages (when
# root and missing) and the Python virtualenv in .venv. Idempotent and quick
# when everything is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
for pair in keepalived:keepalived ipvsadm:ipvsadm ip:iproute2 qemu-system-x86_64:qemu-system-x86 \
            busybox:busybox-static curl:curl nft:nftables; do
    cmd=${pair%%:*}; pkg=${pair#*:}
    command -v "$cmd" >/dev/null 2>&1 || [ -x "/usr/sbin/$cmd" ] || [ -x "/sbin/$cmd" ] || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "bootstrap: missing packages ${need[*]}; run as root or install them" >&2
        exit 1
    fi
    echo "bootstrap: installing ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
stamp=.venv/.requirements.sha
want=$(sha256sum requirements.txt | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "bootstrap: installing Python requirements into .venv"
    .venv/bin/pip install -q --disable-pip-version-check -r requirements.txt
    echo "$want" > "$stamp"
fi
