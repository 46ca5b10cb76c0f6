#!/usr/bin/env bash
# Installs the client libraries that proxy/tests/client_libraries.rs runs applications with,
# cached outside the clone: redis-py (from PyPI, in a virtualenv), ioredis and node-redis (from
# npm, as locked in proxy/tests/apps/node), the Jedis and Lettuce application in
# proxy/tests/apps/java (built with Maven from Maven Central) and the go-redis application in
# proxy/tests/apps/go-redis (built with the Go module proxy). Prints the Python interpreter,
# the Node.js module directory, the Java class path and the go-redis binary on its last four
# lines.
set -euo pipefail

REDIS_PY_VERSION="${REDIS_PY_VERSION:-8.1.0}"
CACHE="${RESPMESH_CACHE:-$HOME/.cache/respmesh}/clients"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VENV="$CACHE/redis-py-$REDIS_PY_VERSION"
APP="$CACHE/go-redis-app"
SRC="$ROOT/proxy/tests/apps/go-redis"
NODE_SRC="$ROOT/proxy/tests/apps/node"
NODE="$CACHE/node"
JAVA_SRC="$ROOT/proxy/tests/apps/java"
JAVA="$CACHE/java"

log() { echo "client-apps: $*" >&2; }

mkdir -p "$CACHE"
if ! "$VENV/bin/python" -c 'import redis' 2>/dev/null; then
  log "installing redis-py $REDIS_PY_VERSION into $VENV"
  rm -rf "$VENV"
  python3 -m venv "$VENV" >&2
  "$VENV/bin/pip" install -q --disable-pip-version-check "redis==$REDIS_PY_VERSION" >&2
fi

if [[ ! -x "$APP" || -n "$(find "$SRC" -newer "$APP" -print -quit)" ]]; then
  command -v go >/dev/null || { log "go is required to build the go-redis application"; exit 1; }
  log "building the go-redis application"
  (cd "$SRC" && GOFLAGS=-mod=readonly go build -o "$APP.tmp" . >&2)
  mv "$APP.tmp" "$APP"
fi

if ! cmp -s "$NODE_SRC/package-lock.json" "$NODE/package-lock.json" || [[ ! -d "$NODE/node_modules" ]]; then
  command -v npm >/dev/null || { log "npm is required to install ioredis and node-redis"; exit 1; }
  log "installing ioredis and node-redis into $NODE"
  rm -rf "$NODE"
  mkdir -p "$NODE"
  cp "$NODE_SRC/package.json" "$NODE_SRC/package-lock.json" "$NODE/"
  (cd "$NODE" && npm ci --no-audit --no-fund --loglevel=error >&2)
fi

# Rebuilt when the sources differ from the last build's.
stamp="$(cd "$JAVA_SRC" && find . -type f -not -path './target/*' | sort | xargs sha256sum | sha256sum)"
if [[ "$(cat "$JAVA/stamp" 2>/dev/null)" != "$stamp" ]]; then
  command -v mvn >/dev/null || { log "mvn is required to build the Jedis and Lettuce application"; exit 1; }
  log "building the Jedis and Lettuce application in $JAVA"
  rm -rf "$JAVA"
  mkdir -p "$JAVA"
  cp -r "$JAVA_SRC/pom.xml" "$JAVA_SRC/src" "$JAVA/"
  (cd "$JAVA" && mvn -q -B package dependency:copy-dependencies -DoutputDirectory=target/lib >&2)
  echo "$stamp" > "$JAVA/stamp"
fi

echo "$VENV/bin/python"
echo "$NODE/node_modules"
echo "$JAVA/target/classes:$JAVA/target/lib/*"
echo "$APP"
