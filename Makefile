# Two entry points for a fresh Debian machine: `make demo` and `make test`.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
APT_PKGS := tshark tcpreplay iproute2 dnsmasq-base mosquitto mosquitto-clients curl gcc python3-dev  # gcc, headers: upf_tap/_walk.c

.PHONY: setup sysdeps demo test lint bench clean

$(VENV)/.installed: pyproject.toml setup.py upf_tap/_walk.c
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# editable_mode=compat: a plain path in a .pth, not setuptools' import-hook finder, which costs
	# every Python start here ~9 ms (it imports pathlib); the default mode if a setuptools lacks it
	$(PY) -m pip install -q -e '.[dev]' --config-settings editable_mode=compat || $(PY) -m pip install -q -e '.[dev]'
	$(PY) -m compileall -q upf_tap detector testbed mec_common >/dev/null  # as an install would (PYTHONDONTWRITEBYTECODE may be set)
	touch $@

setup: sysdeps $(VENV)/.installed

# Debian packages the tests use (tshark is the decoding oracle, tcpreplay feeds live capture).
sysdeps:
	@missing=""; for p in $(APT_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi; \
	  echo "installing Debian packages:$$missing"; \
	  $$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q $$missing; \
	fi

demo: setup
	$(VENV)/bin/testbed demo

test: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/python -m pytest -q

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

# the benchmark's peers beyond tshark: nDPI's reader (Debian) and NFStream (PyPI)
bench: setup
	@dpkg -s libndpi-bin >/dev/null 2>&1 || { if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi; \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q libndpi-bin; }
	$(PY) -m pip install -q -e '.[dev,bench]' --config-settings editable_mode=compat || $(PY) -m pip install -q -e '.[dev,bench]'
	$(PY) bench/run_all.py

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .ruff_cache
