#!/usr/bin/env bash
# Builds kube-apiserver from the Go module proxy and provides etcd, cached by version
# outside the clone. Prints the directory holding the binaries on its last line.
#
#   scripts/k8s-bins.sh            # build if missing, print the bin dir
#   K8S_VERSION=v1.36.3 scripts/k8s-bins.sh
#
# kube-apiserver: k8s.io/kubernetes is consumed as a module with one `replace` per staging
# module (k/k's own go.mod points them at ./staging, which a consumer cannot see); the list
# of staging modules is read from the .mod file the proxy serves for that release.
# etcd: built from go.etcd.io/etcd/server/v3 in a separate module, so the two dependency
# graphs never mix.
set -euo pipefail

K8S_VERSION="${K8S_VERSION:-v1.37.2}"
ETCD_VERSION="${ETCD_VERSION:-v3.6.8}"
CACHE="${RESPMESH_CACHE:-$HOME/.cache/respmesh}"
BIN="$CACHE/k8s/$K8S_VERSION-etcd$ETCD_VERSION/bin"
WORK="$CACHE/k8s/build"

log() { echo "k8s-bins: $*" >&2; }

if [[ -x "$BIN/kube-apiserver" && -x "$BIN/etcd" ]]; then
  echo "$BIN"
  exit 0
fi

command -v go >/dev/null || { log "go is required to build kube-apiserver"; exit 1; }
mkdir -p "$BIN" "$WORK"
export CGO_ENABLED=0 GOFLAGS=-mod=mod

if [[ ! -x "$BIN/kube-apiserver" ]]; then
  started=$(date +%s)
  dir="$WORK/apiserver-$K8S_VERSION"
  rm -rf "$dir" && mkdir -p "$dir" && cd "$dir"
  minor="${K8S_VERSION#v1.}"; minor="${minor%%.*}"
  staging_version="v0.${K8S_VERSION#v1.}"
  go mod init respmesh.invalid/k8sbin >/dev/null 2>&1
  log "reading the staging module list of k8s.io/kubernetes@$K8S_VERSION"
  gomod=$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)",*/\1/p')
  [[ -f "$gomod" ]] || { log "the module proxy did not serve k8s.io/kubernetes@$K8S_VERSION"; exit 1; }
  goline=$(sed -n 's/^go \([0-9.]*\)$/\1/p' "$gomod" | head -1)
  go mod edit -go="$goline"
  mapfile -t staging < <(grep -o 'k8s.io/[a-z0-9-]* => ./staging/src/k8s.io/[a-z0-9-]*' "$gomod" | awk '{print $1}' | sort -u)
  [[ ${#staging[@]} -gt 20 ]] || { log "found only ${#staging[@]} staging modules in $gomod"; exit 1; }
  for m in "${staging[@]}"; do go mod edit -replace="$m=$m@$staging_version"; done
  log "${#staging[@]} staging modules replaced with $staging_version; fetching (go $goline)"
  go get "k8s.io/kubernetes/cmd/kube-apiserver@$K8S_VERSION"
  log "compiling kube-apiserver $K8S_VERSION (the first build takes several minutes)"
  go build -trimpath -ldflags "-s -w \
    -X k8s.io/component-base/version.gitMajor=1 \
    -X k8s.io/component-base/version.gitMinor=$minor \
    -X k8s.io/component-base/version.gitVersion=$K8S_VERSION" \
    -o "$BIN/kube-apiserver.tmp" k8s.io/kubernetes/cmd/kube-apiserver
  mv "$BIN/kube-apiserver.tmp" "$BIN/kube-apiserver"
  log "kube-apiserver built in $(( $(date +%s) - started )) s"
fi

if [[ ! -x "$BIN/etcd" ]]; then
  started=$(date +%s)
  dir="$WORK/etcd-$ETCD_VERSION"
  rm -rf "$dir" && mkdir -p "$dir" && cd "$dir"
  go mod init respmesh.invalid/etcdbin >/dev/null 2>&1
  go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION"
  log "compiling etcd $ETCD_VERSION"
  go build -trimpath -ldflags "-s -w" -o "$BIN/etcd.tmp" go.etcd.io/etcd/server/v3
  mv "$BIN/etcd.tmp" "$BIN/etcd"
  log "etcd built in $(( $(date +%s) - started )) s"
fi

echo "$BIN"
