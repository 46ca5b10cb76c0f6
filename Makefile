# respmesh: one workspace, a few entry points. Targets install what they need.
#
#   make demo    the seed's auth scenarios (1 and 2) against a real redis-server, no cluster needed
#   make test    unit + integration tests (real redis-server processes on 127.0.0.1)
#   make bench   direct Redis vs twemproxy vs respmesh-proxy, one table
#   make lint    rustfmt + clippy (warnings are errors)
#   make fuzz    run the RESP parser fuzz targets for a while (FUZZ_SECONDS, default 60)

SHELL := /bin/bash
CACHE ?= $(HOME)/.cache/respmesh
export CARGO_TARGET_DIR ?= $(CACHE)/target
CARGO ?= cargo
PROXY_RELEASE := $(CARGO_TARGET_DIR)/release/respmesh-proxy
FUZZ_SECONDS ?= 60

# Debian packages the tests, the demo and the benchmark run for real.
APT_PACKAGES := redis-server redis-tools nutcracker
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: all deps build release test demo bench lint fmt fuzz clean help

all: build

help:
	@sed -n '1,9p' Makefile

# Installs redis-server, redis-cli, redis-benchmark and nutcracker when any is missing.
deps:
	@missing=""; \
	command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	command -v redis-cli >/dev/null && command -v redis-benchmark >/dev/null || missing="$$missing redis-tools"; \
	command -v nutcracker >/dev/null || [ -x /usr/sbin/nutcracker ] || missing="$$missing nutcracker"; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing >/dev/null; \
	fi
	@# The packaged service is not needed (tests start their own servers on free ports).
	@-$(SUDO) systemctl disable --now redis-server >/dev/null 2>&1 || true

build:
	$(CARGO) build --workspace

release:
	$(CARGO) build --release -p respmesh-proxy

test: deps
	$(CARGO) test --workspace --no-fail-fast

demo: deps release
	@PROXY=$(PROXY_RELEASE) scripts/demo.sh

bench: deps release
	@PATH="$$PATH:/usr/sbin" python3 scripts/bench.py $(PROXY_RELEASE)

lint:
	@rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy rustfmt
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

fuzz:
	@scripts/fuzz.sh $(FUZZ_SECONDS)

clean:
	$(CARGO) clean
