# salt-edge-ha: the two commands are `make demo` and `make test`.
PY := .venv/bin/python

.PHONY: bootstrap test unit demo bench lab-up lab-down clean

bootstrap:
	@bash lab/bootstrap.sh

# The whole suite: unit, Kubernetes (emulator), functional (namespaces, real
# keepalived and salt), and the IPVS tests inside a qemu VM.
test: bootstrap
	$(PY) -m pytest $(PYTEST_ARGS)

unit: bootstrap
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

demo: bootstrap
	$(PY) lab/demo.py

bench: bootstrap
	$(PY) bench/run_all.py

clean:
	rm -rf .venv .cache .pytest_cache
