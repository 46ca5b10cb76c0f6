#!/usr/bin/env bash
# make cluster-up / cluster-down: a local Kubernetes API (etcd + kube-apiserver, no kubelet)
# with respmesh's CRDs, for trying the operator by hand.
set -euo pipefail
STATE="${RESPMESH_CACHE:-$HOME/.cache/respmesh}/cluster"
BIN="${CARGO_TARGET_DIR:-$HOME/.cache/respmesh/target}/debug/respmesh-local-cluster"
mkdir -p "$STATE"

case "${1:-}" in
  up)
    if [[ -f "$STATE/pid" ]] && kill -0 "$(cat "$STATE/pid")" 2>/dev/null; then
      echo "already running; export KUBECONFIG=$STATE/kubeconfig"
      exit 0
    fi
    rm -f "$STATE/kubeconfig"
    RESPMESH_K8S_BIN="$(scripts/k8s-bins.sh | tail -1)" nohup "$BIN" "$STATE/kubeconfig" >"$STATE/log" 2>&1 &
    echo $! >"$STATE/pid"
    for _ in $(seq 1 600); do
      [[ -s "$STATE/kubeconfig" ]] && break
      kill -0 "$(cat "$STATE/pid")" 2>/dev/null || { cat "$STATE/log"; exit 1; }
      sleep 0.2
    done
    cat "$STATE/log"
    cat <<MSG

A local Kubernetes API is running (no kubelet: pods are stored, not run).
  export KUBECONFIG=$STATE/kubeconfig
  kubectl apply -f manifests/operator/operator.yaml
  kubectl apply -f manifests/examples/demo-services.yaml
  cargo run -p respmesh-operator -- --http 127.0.0.1:8080     # with that KUBECONFIG
Stop it with: make cluster-down
MSG
    ;;
  down)
    if [[ -f "$STATE/pid" ]]; then
      kill "$(cat "$STATE/pid")" 2>/dev/null || true
      rm -f "$STATE/pid" "$STATE/kubeconfig"
      echo "stopped"
    else
      echo "not running"
    fi
    ;;
  *) echo "usage: $0 up|down" >&2; exit 2 ;;
esac
