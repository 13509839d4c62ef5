# The two commands of the README: `make run` and `make test`.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
REDIS_PORT ?= 6391
# Two pytest workers, each test file on one of them: most of the suite waits on subprocesses and
# live-cadence feeds, so two workers on the two cores halve the wall time. PYTEST_ARGS= runs serially.
PYTEST_ARGS ?= -n 2 --dist loadfile
REDIS_DIR := $(CURDIR)/.redis
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: run demo test lint redis-start redis-stop prometheus promtool-test clean bench install

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip setuptools wheel

# Core install: what the daemon needs, no torch.
$(VENV)/.core: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

# Test install: torch pinned to the local CPU build first, then the extras.
$(VENV)/.test: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[train,dev,cluster]'
	touch $@ $(VENV)/.core

run: $(VENV)/.core
	$(BIN)/barsignal run --config config.toml

# Offline: feed serve on recorded bars -> the daemon in paper mode -> paper report -> parity
# (docs/QUICKSTART.md). DEMO_ARGS="--minutes 240 --long-threshold 0.55" passes options on.
demo: $(VENV)/.core
	$(BIN)/barsignal demo $(DEMO_ARGS)

test: $(VENV)/.test
	@$(MAKE) --no-print-directory prometheus
	@$(MAKE) --no-print-directory redis-start
	@set -o pipefail; rc=0; \
	  $(BIN)/ruff check . || rc=$$?; \
	  if [ $$rc -eq 0 ]; then $(MAKE) --no-print-directory promtool-test || rc=$$?; fi; \
	  if [ $$rc -eq 0 ]; then \
	    BARSIGNAL_TEST_REDIS_URL=redis://127.0.0.1:$(REDIS_PORT)/0 $(BIN)/pytest $(PYTEST_ARGS) || rc=$$?; \
	  fi; \
	  $(MAKE) --no-print-directory redis-stop; exit $$rc

lint: $(VENV)/.test
	$(BIN)/ruff check .

# A real redis-server on loopback for the sink tests (installed from Debian if absent).
redis-start:
	@command -v redis-server >/dev/null || { \
	  echo "installing redis-server from Debian's packages"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server) >/dev/null \
	  || { echo "could not install redis-server; install it with: apt-get install redis-server" >&2; exit 1; }; }
	@mkdir -p $(REDIS_DIR)
	@redis-server --port $(REDIS_PORT) --bind 127.0.0.1 --save '' --appendonly no \
	  --dir $(REDIS_DIR) --daemonize yes --pidfile $(REDIS_DIR)/redis.pid --logfile $(REDIS_DIR)/redis.log
	@for i in $$(seq 50); do redis-cli -p $(REDIS_PORT) ping >/dev/null 2>&1 && break; sleep 0.1; done

redis-stop:
	@-[ -f $(REDIS_DIR)/redis.pid ] && kill $$(cat $(REDIS_DIR)/redis.pid) 2>/dev/null; rm -f $(REDIS_DIR)/redis.pid

# promtool and prometheus (Debian's `prometheus` package) for the deploy/ rule checks and the
# real-Prometheus test; installed from Debian if absent. The tests run their own server on a free
# loopback port; the package's own service (port 9090, where systemd starts it) is not used.
prometheus:
	@command -v promtool >/dev/null && command -v prometheus >/dev/null || { \
	  echo "installing prometheus (promtool) from Debian's packages"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	    prometheus) >/dev/null \
	  || { echo "could not install prometheus; install it with: apt-get install prometheus" >&2; exit 1; }; }

# The alerting rules: syntax (promtool check rules) and their unit tests (promtool test rules).
promtool-test: prometheus
	promtool check rules deploy/prometheus/barsignal.rules.yml
	cd deploy/prometheus && promtool test rules barsignal.rules.test.yml

bench: $(VENV)/.test
	$(BIN)/barsignal bench scoring
	$(BIN)/barsignal bench features

clean:
	rm -rf $(VENV) build dist *.egg-info .redis

# Install as a systemd service (root): a venv under $(PREFIX), the unit, config and empty
# credential files. GPU=1 adds the TensorRT extra and the GPU drop-in. See docs/DEPLOY.md.
PREFIX ?= /opt/barsignal
GPU ?= 0
install:
	$(PY) -m venv $(PREFIX)/venv
	$(PREFIX)/venv/bin/pip install -q --upgrade pip
	$(PREFIX)/venv/bin/pip install -q "$(CURDIR)$(if $(filter 1,$(GPU)),[gpu])"
	install -D -m 0644 systemd/barsignal.service /etc/systemd/system/barsignal.service
	sed -i 's#/opt/barsignal/venv#$(PREFIX)/venv#' /etc/systemd/system/barsignal.service
	@if [ "$(GPU)" = 1 ]; then install -D -m 0644 systemd/barsignal-gpu.conf \
	  /etc/systemd/system/barsignal.service.d/gpu.conf; fi
	install -d -m 0755 /etc/barsignal
	[ -f /etc/barsignal/config.toml ] || install -m 0644 config.toml /etc/barsignal/config.toml
	install -d -m 0700 /etc/barsignal/credentials
	for c in BARSIGNAL_WEBHOOK_TOKEN BARSIGNAL_REDIS_PASSWORD; do \
	  [ -f /etc/barsignal/credentials/$$c ] || install -m 0600 /dev/null /etc/barsignal/credentials/$$c; done
	systemctl daemon-reload
	@echo "installed; start with: systemctl enable --now barsignal"
