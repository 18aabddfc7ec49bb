#!/usr/bin/env bash
# Two trioproxy hosts (ports 8081, 8082) sharing one Redis (port 6390), each with its own
# built-in mock upstream and data dir. Ctrl-C stops all three.
# From the repository root:  bash examples/multi-host/run.sh   (or: make multi-host)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$here/../.."
bin="$root/.venv/bin"
command -v redis-server >/dev/null || { echo "needs redis-server (apt-get install redis-server)"; exit 1; }
ports="${TRIOPROXY_DEMO_PORTS:-8081 8082}"
redis_port="${TRIOPROXY_DEMO_REDIS_PORT:-6390}"
state="$(mktemp -d)"
trap 'kill 0' EXIT
redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly yes --dir "$state" >/dev/null &
for port in $ports; do
  # Each host reads its own copy of the config: its data dir (signing key, receipt spool)
  # is the folder beside the config file, so each host has its own.
  mkdir -p "$state/host-$port"
  sed "s/127.0.0.1:6390/127.0.0.1:$redis_port/" "$here/gateway.toml" > "$state/host-$port/gateway.toml"
  (cd "$state/host-$port" && "$bin/trioproxy" serve --config "$state/host-$port/gateway.toml" \
    --bind "127.0.0.1:$port") &
done
cat <<TXT
host A: http://127.0.0.1:8081   host B: http://127.0.0.1:8082   (Redis on 6390)
key:    tp-demo-multi-host-key  (max_streams = 2, rpm = 60: for both hosts together)

  curl -N http://127.0.0.1:8081/v1/chat/completions -H 'authorization: Bearer tp-demo-multi-host-key' \\
       -H 'content-type: application/json' -d '{"model":"mock-t200-i50","stream":true,"messages":[]}'
  # two of those (on either host), and a third is a 429 on both
  curl http://127.0.0.1:8082/v1/usage -H 'authorization: Bearer tp-demo-multi-host-key'
TXT
wait
