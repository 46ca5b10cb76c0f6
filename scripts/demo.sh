#!/usr/bin/env bash
# The seed's scenarios 1 and 2 (authentication offload), for real: a password-protected
# redis-server, respmesh-proxy in front of it, and redis-cli as the application.
# Configuration changes are made the way the operator will make them: by rewriting the
# proxy's configuration file, which the proxy reloads without dropping connections.
set -euo pipefail

PROXY=${PROXY:?set PROXY to the respmesh-proxy binary}
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
http_get() { python3 -c 'import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1]).read().decode())' "$1" 2>/dev/null; }
wait_port() { for _ in $(seq 100); do redis-cli -p "$1" ping >/dev/null 2>&1 && return; sleep 0.05; done; echo "port $1 did not open" >&2; exit 1; }
say() { printf '\n\033[1m%s\033[0m\n' "$*"; }

# Runs commands on one connection, printed as redis-cli's prompt shows them.
session() {
  local name=$1; shift
  python3 "$(dirname "$0")/resp-session.py" "$name" "$port" "$@"
}

redis_port=$(free_port)
redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no --dir "$work" \
  --requirepass testredis >/dev/null &
pids+=($!)
wait_port "$redis_port" 2>/dev/null || sleep 0.3

port=$(free_port)
admin=$(free_port)
# The Secret of scenario 1, as a mounted file: "testredis\n" (the trailing newline is trimmed).
printf 'testredis\n' >"$work/password"

config() {
  cat >"$work/config.yaml.tmp" <<YAML
apiVersion: proxy.respmesh.io/v1alpha1
kind: ProxyConfig
listeners:
  - address: "127.0.0.1:$port"
    service: redis-single.redis.svc.cluster.local
services:
  - host: redis-single.redis.svc.cluster.local
    endpoints: ["127.0.0.1:$redis_port"]
$1
YAML
  mv "$work/config.yaml.tmp" "$work/config.yaml"
}

wait_generation() {
  for _ in $(seq 100); do
    http_get "http://127.0.0.1:$admin/config" | grep -q "\"generation\": $1" && return
    sleep 0.05
  done
  echo "the proxy did not reload its configuration" >&2
  exit 1
}

say "Setup: redis-single requires a password (requirepass testredis); respmesh-proxy listens on 127.0.0.1:$port"
config ""
"$PROXY" --config "$work/config.yaml" --admin "127.0.0.1:$admin" --log-level warn &
pids+=($!)
wait_port "$port"

say "Without any respmesh resource, the application gets:"
session redis-single "set a a"

say "Scenario 1: RedisDestination with auth.secret -> the sidecar logs in for the client"
config "    auth: {passwordFile: \"$work/password\"}"
wait_generation 2
session redis-single "set foo bar"

say "Scenario 2: RedisService with settings.auth.plain -> clients have their own password"
config "    auth: {passwordFile: \"$work/password\"}
    clientAuth: {password: \"testredis123!\"}"
wait_generation 3
session redis-single "AUTH testredis" "AUTH testredis123!" "get foo"

say "Changing the real Redis password needs no client change:"
redis-cli -p "$redis_port" -a testredis --no-auth-warning config set requirepass n3w-pa55 >/dev/null
printf 'n3w-pa55\n' >"$work/password.new" && mv "$work/password.new" "$work/password"
wait_generation 4
session redis-single "AUTH testredis123!" "get foo"

say "Scenario 7: fault injection, ERROR for 50% of GETs"
config "    auth: {passwordFile: \"$work/password\"}
    faults:
      - type: ERROR
        percentage: {value: 50}
        commands: [GET]"
wait_generation 5
session redis-single "set a a" "get a" "get a" "get a" "get a" "get a" "get a"

say "Scenario 3: a Redis Cluster (3 primaries, 3 replicas) that looks like one Redis"
cluster_ports=()
for _ in 1 2 3 4 5 6; do
  while :; do
    p=$(free_port)
    [ "$p" -lt 55000 ] && ! (echo >/dev/tcp/127.0.0.1/$((p + 10000))) 2>/dev/null && break
  done
  mkdir -p "$work/node-$p"
  redis-server --port "$p" --bind 127.0.0.1 --save '' --appendonly no --dir "$work/node-$p" \
    --cluster-enabled yes --cluster-config-file nodes.conf --cluster-node-timeout 2000 >/dev/null &
  pids+=($!)
  cluster_ports+=("$p")
done
for p in "${cluster_ports[@]}"; do wait_port "$p"; done
redis-cli --cluster create $(printf '127.0.0.1:%s ' "${cluster_ports[@]}") --cluster-replicas 1 --cluster-yes >/dev/null
for p in "${cluster_ports[@]}"; do
  for _ in $(seq 200); do
    redis-cli -p "$p" cluster info | grep -q cluster_state:ok && break
    sleep 0.1
  done
done
# Ask a node that does not own foo's slot, as a plain client would.
for p in "${cluster_ports[@]}"; do
  case "$(redis-cli -p "$p" get foo)" in *MOVED*) moved_port=$p; break ;; esac
done
echo "Without respmesh, a plain (non-cluster) client talking to a cluster node:"
port=$moved_port session redis-cluster "set foo bar"
cport=$(free_port)
cadmin=$(free_port)
"$PROXY" --listen "127.0.0.1:$cport" --upstream "127.0.0.1:${cluster_ports[0]}" --mode cluster \
  --admin "127.0.0.1:$cadmin" --log-level warn &
pids+=($!)
wait_port "$cport"
echo "With a RedisDestination in mode CLUSTER, through respmesh-proxy:"
port=$cport session redis-cluster "set foo bar" "get foo" "mset a 1 b 2 c 3" "mget a b c foo" "dbsize"

# Scenarios 4 and 6 use both Redis: routes on redis-cluster, redis-single behind them.
rport=$(free_port)
radmin=$(free_port)
routes() {
  cat >"$work/routes.yaml.tmp" <<YAML
apiVersion: proxy.respmesh.io/v1alpha1
kind: ProxyConfig
listeners:
  - address: "127.0.0.1:$rport"
    service: redis-cluster.redis.svc.cluster.local
services:
  - host: redis-single.redis.svc.cluster.local
    endpoints: ["127.0.0.1:$redis_port"]
    auth: {passwordFile: "$work/password"}
  - host: redis-cluster.redis.svc.cluster.local
    mode: CLUSTER
    endpoints: ["127.0.0.1:${cluster_ports[0]}"]
    routes:
$1
YAML
  mv "$work/routes.yaml.tmp" "$work/routes.yaml"
}
routes "      - match: {key: {prefix: cluster}}
        route: {host: redis-cluster.redis.svc.cluster.local}
      - route: {host: redis-single.redis.svc.cluster.local}"
"$PROXY" --config "$work/routes.yaml" --admin "127.0.0.1:$radmin" --log-level warn &
pids+=($!)
wait_port "$rport"

say "Scenario 4: key-prefix routing (cluster* -> redis-cluster, everything else -> redis-single)"
port=$rport session redis-cluster "set test-route 'this key goes to redis-single'" \
  "set cluster-test-route 'this key goes to redis-cluster'" "get test-route" "get cluster-test-route"
echo "And as seen from redis-single itself:"
port=$redis_port session redis-single "auth n3w-pa55" "get test-route" "get cluster-test-route"

say "Scenario 6: traffic mirroring (redis-cluster, 100% mirrored to redis-single)"
routes "      - route: {host: redis-cluster.redis.svc.cluster.local}
        mirror:
          - route: {host: redis-single.redis.svc.cluster.local}
            percentage: {value: 100}"
for _ in $(seq 100); do
  http_get "http://127.0.0.1:$radmin/config" | grep -q '"generation": 2' && break
  sleep 0.05
done
port=$rport session redis-cluster "set test-traffic-mirroring 'this key goes to both redis-cluster and redis-single'" \
  "get test-traffic-mirroring"
sleep 0.2
echo "And as seen from redis-single itself:"
port=$redis_port session redis-single "auth n3w-pa55" "get test-traffic-mirroring"

say "What the proxy counted (from http://127.0.0.1:$admin/metrics):"
http_get "http://127.0.0.1:$admin/metrics" | grep -E '^respmesh_proxy_(commands_total|command_errors_total|config_reloads_total)' || true
echo
