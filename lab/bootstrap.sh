#!/usr/bin/env bash
# Prepare a fresh machine for `make test` / `make demo`: Debian packages (when
# root and missing) and the Python virtualenv in .venv. Idempotent and quick
# when everything is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
for pair in keepalived:keepalived ipvsadm:ipvsadm ip:iproute2 qemu-system-x86_64:qemu-system-x86 \
            busybox:busybox-static curl:curl nft:nftables redis-server:redis-server; do
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
# Packages dropped from requirements.txt that an older .venv may still hold
# (pip install never removes anything); pytest would autoload their plugins:
# pytest-salt-factories (never used) and the pytest plugins only it pulled in,
# pyroute2 (_modules/ipvs.py speaks netlink itself).
DROPPED="pytest-salt-factories pytest-helpers-namespace pytest-skip-markers pytest-system-statistics
         pytest-shell-utilities pyroute2"

# venv DIR REQUIREMENTS-FILE: create DIR if missing, (re)install when the
# requirements changed (stamp = sha256 of the file actually installed).
venv() {
    local dir=$1 reqs=$2 stamp=$1/.requirements.sha want
    if [ ! -x "$dir/bin/python" ]; then
        "$PY" -m venv "$dir"
    fi
    want=$(sha256sum "$reqs" | cut -d' ' -f1)
    if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
        echo "bootstrap: installing Python requirements into $dir"
        "$dir/bin/pip" install -q --disable-pip-version-check -r "$reqs"
        for pkg in $DROPPED; do
            if "$dir/bin/pip" show -q "$pkg" >/dev/null 2>&1; then
                "$dir/bin/pip" uninstall -q -y "$pkg"
            fi
        done
        echo "$want" > "$stamp"
    fi
}

venv .venv requirements.txt

# `--matrix` (make test): the older Salt releases we support, each in its own
# cached venv with the same requirements and only the salt pin changed.
# Salt 3008 is requirements.txt's pin (.venv).
SALT_MATRIX=${SALT_MATRIX:-"3006.29 3007.16"}
if [ "${1:-}" = "--matrix" ]; then
    for version in $SALT_MATRIX; do
        dir=.venv-${version%%.*}
        mkdir -p "$dir"
        sed "s/^salt==.*/salt==$version/" requirements.txt > "$dir/requirements.txt.new"
        if ! cmp -s "$dir/requirements.txt.new" "$dir/requirements.txt"; then
            mv "$dir/requirements.txt.new" "$dir/requirements.txt"
        else
            rm -f "$dir/requirements.txt.new"
        fi
        venv "$dir" "$dir/requirements.txt"
    done
fi
