#!/usr/bin/env bash
# The older Salt releases of the support matrix (README: Salt versions): the
# tiers that exercise Salt itself (unit, k8s, functional) in each venv that
# `lab/bootstrap.sh --matrix` made (.venv-3006, .venv-3007). The newest Salt
# (.venv, requirements.txt's pin) runs the whole suite, lab and VM included,
# from `make test`.
#
#   tests/salt_matrix.sh [pytest args...]
#   SALT_MATRIX_VENVS=".venv-3006" tests/salt_matrix.sh -x
#   SALT_MATRIX_PARALLEL=1 tests/salt_matrix.sh      # the venvs at the same time
#
# One venv after the other by default: on 2 cores the two in parallel took
# longer (8m08s wall) than one after the other (6m30s: 3m08s + 3m17s), the
# salt-call start-ups being CPU-bound (measured on a shared, loaded machine).
# Parallel runs are safe: every test uses its own pid-prefixed namespaces.
# Each venv's output goes to .cache/salt-matrix/<venv>.log and is printed
# when that venv is done. Exit status: the first failing venv's.
set -uo pipefail
cd "$(dirname "$0")/.."

VENVS=${SALT_MATRIX_VENVS:-".venv-3006 .venv-3007"}
TIERS=${SALT_MATRIX_TIERS:-"tests/unit tests/k8s tests/functional"}
PARALLEL=${SALT_MATRIX_PARALLEL:-0}
LOGS=.cache/salt-matrix
mkdir -p "$LOGS"

run_one() {
    local venv=$1; shift
    local version
    if [ ! -x "$venv/bin/python" ]; then
        echo "salt matrix: $venv is missing (make bootstrap-matrix)" >"$LOGS/${venv#.}.log"
        return 1
    fi
    version=$("$venv/bin/python" -c 'import salt.version; print(salt.version.__version__)')
    {
        echo "== salt $version ($venv): $TIERS"
        # shellcheck disable=SC2086
        "$venv/bin/python" -m pytest -p no:cacheprovider $TIERS "$@"
    } >"$LOGS/${venv#.}.log" 2>&1
}

start=$(date +%s)
declare -A pids rcs
for venv in $VENVS; do
    if [ "$PARALLEL" = 1 ]; then
        run_one "$venv" "$@" & pids[$venv]=$!
    else
        run_one "$venv" "$@"; rcs[$venv]=$?
        cat "$LOGS/${venv#.}.log"
    fi
done
rc=0
for venv in $VENVS; do
    if [ "$PARALLEL" = 1 ]; then
        wait "${pids[$venv]}"; rcs[$venv]=$?
        cat "$LOGS/${venv#.}.log"
    fi
    if [ "${rcs[$venv]}" -ne 0 ] && [ "$rc" -eq 0 ]; then
        rc=${rcs[$venv]}
    fi
done
echo "salt matrix: $(for v in $VENVS; do printf '%s=%s ' "$v" "${rcs[$v]}"; done)in $(( $(date +%s) - start )) s"
exit "$rc"
