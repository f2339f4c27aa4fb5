# salt-edge-ha: the two commands are `make demo` and `make test`.
PY := .venv/bin/python

.PHONY: bootstrap bootstrap-matrix test test-matrix test-systemd unit wheel demo bench lab-up lab-down clean

bootstrap:
	@bash lab/bootstrap.sh

# .venv plus the older Salts of the support matrix (.venv-3006, .venv-3007)
bootstrap-matrix:
	@bash lab/bootstrap.sh --matrix

# The whole suite on the newest Salt (.venv): unit, Kubernetes (emulator),
# functional (namespaces, real keepalived and salt, the wheel), the lab, and
# the IPVS tests inside a qemu VM; then unit, Kubernetes and functional on
# Salt 3006 and 3007 (tests/salt_matrix.sh, ~6.5 min; SALT_MATRIX_VENVS= skips them).
# Exit status: the first failure's.
test: bootstrap-matrix
	@rc=0; $(PY) -m pytest $(PYTEST_ARGS) || rc=$$?; \
	if [ -n "$(strip $(SALT_MATRIX_VENVS))" ]; then \
	    SALT_MATRIX_VENVS="$(SALT_MATRIX_VENVS)" bash tests/salt_matrix.sh $(MATRIX_PYTEST_ARGS) || { r=$$?; [ $$rc -ne 0 ] || rc=$$r; }; \
	fi; exit $$rc

SALT_MATRIX_VENVS ?= .venv-3006 .venv-3007
# pytest arguments for the older Salts (not PYTEST_ARGS: those may name tiers they do not run)
MATRIX_PYTEST_ARGS ?= -q

test-matrix: bootstrap-matrix
	SALT_MATRIX_VENVS="$(SALT_MATRIX_VENVS)" bash tests/salt_matrix.sh $(MATRIX_PYTEST_ARGS)

unit: bootstrap
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

# the Salt extension's wheel in dist/ (tests/functional/test_wheel_install.py builds and installs it too)
wheel: bootstrap
	rm -rf build
	$(PY) -m pip wheel --no-deps --disable-pip-version-check -q -w dist .
	rm -rf build *.egg-info

demo: bootstrap
	$(PY) lab/demo.py

test-systemd: bootstrap
	EDGE_HA_VM_SYSTEMD=1 $(PY) -m pytest tests/vm/test_in_vm.py -k systemd -s

bench: bootstrap
	$(PY) -m pip install -q -r requirements-bench.txt
	$(PY) bench/run_all.py

clean:
	rm -rf .venv .venv-3006 .venv-3007 .cache .pytest_cache build dist *.egg-info
