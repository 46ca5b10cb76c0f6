# respmesh: one workspace, a few entry points. Targets install what they need.
#
#   make demo    the seed's auth scenarios (1 and 2) against a real redis-server, no cluster needed
#   make test    unit + integration tests (real redis-server processes on 127.0.0.1)
#   make bench   direct Redis vs twemproxy vs respmesh-proxy, one table (LAYOUT=pod|shared|split)
#   make lint    rustfmt + clippy (warnings are errors)
#   make fuzz    run the RESP parser fuzz targets for a while (FUZZ_SECONDS, default 60)
#   make cluster-up / cluster-down   a local Kubernetes API (etcd + kube-apiserver) to try things
#   make crds    regenerate manifests/crds and manifests/compat from api/src/crd.rs

SHELL := /bin/bash
CACHE ?= $(HOME)/.cache/respmesh
# Where `make bench` runs its processes (see scripts/bench.py).
LAYOUT ?= pod
export CARGO_TARGET_DIR ?= $(CACHE)/target
export RESPMESH_CACHE := $(CACHE)
CARGO ?= cargo
PROXY_RELEASE := $(CARGO_TARGET_DIR)/release/respmesh-proxy
FUZZ_SECONDS ?= 60

# Debian packages the tests, the demo and the benchmark run for real.
APT_PACKAGES := redis-server redis-tools nutcracker iproute2 iptables python3-venv nodejs npm default-jdk-headless maven
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: all deps k8s-bins client-apps build release test demo bench lint fmt fuzz clean help cluster-up cluster-down crds

all: build

help:
	@sed -n '1,11p' Makefile

# Installs redis-server, redis-cli, redis-benchmark and nutcracker when any is missing.
deps:
	@missing=""; \
	command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	command -v redis-cli >/dev/null && command -v redis-benchmark >/dev/null || missing="$$missing redis-tools"; \
	command -v nutcracker >/dev/null || [ -x /usr/sbin/nutcracker ] || missing="$$missing nutcracker"; \
	command -v ip >/dev/null || [ -x /usr/sbin/ip ] || missing="$$missing iproute2"; \
	command -v iptables >/dev/null || [ -x /usr/sbin/iptables ] || missing="$$missing iptables"; \
	python3 -c 'import venv, ensurepip' 2>/dev/null || missing="$$missing python3-venv"; \
	command -v node >/dev/null || missing="$$missing nodejs"; \
	command -v npm >/dev/null || missing="$$missing npm"; \
	command -v javac >/dev/null || missing="$$missing default-jdk-headless"; \
	command -v mvn >/dev/null || missing="$$missing maven"; \
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

# kube-apiserver and etcd, built from the Go module proxy once and cached by version
# (about 6 minutes on 2 cores the first time; Go from the machine).
k8s-bins:
	@command -v go >/dev/null || { echo "Go is needed to build kube-apiserver (https://go.dev/dl)"; exit 1; }
	@scripts/k8s-bins.sh >/dev/null

# redis-py, ioredis, node-redis, Jedis, Lettuce and a go-redis application, for
# proxy/tests/client_libraries.rs.
client-apps:
	@scripts/client-apps.sh >/dev/null

test: deps k8s-bins client-apps
	$(CARGO) build --workspace
	RESPMESH_K8S_BIN="$$(scripts/k8s-bins.sh 2>/dev/null | tail -1)" $(CARGO) test --workspace --no-fail-fast

cluster-up: k8s-bins
	$(CARGO) build -p respmesh-kubetest --bin respmesh-local-cluster
	@scripts/cluster.sh up

cluster-down:
	@scripts/cluster.sh down

crds:
	$(CARGO) run -q -p respmesh-api --bin crdgen

demo: deps release
	@PROXY=$(PROXY_RELEASE) scripts/demo.sh

bench: deps release
	@PATH="$$PATH:/usr/sbin" python3 scripts/bench.py --layout $(LAYOUT) $(PROXY_RELEASE)

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
