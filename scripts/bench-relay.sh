#!/usr/bin/env bash
# Relay figures for BENCHMARKS.md (issue #6), on loopback: a backlog of N faces is built in
# vigil's outbox while the upstream view library (vigil-sim platform) refuses, then the
# platform accepts and the time to drain the backlog gives the GA/T 1400 push rate (objects
# acknowledged per object by the platform, each marked delivered in the outbox). Run once with
# small records (1 KB picture) and once with 100 KB pictures (MB/s).
# Env: BENCH_RELAY_FACES (20000), BENCH_RELAY_BIG (2000).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p vigil -p vigil-simulators --bins
BIN=./target/release
N=${BENCH_RELAY_FACES:-20000}
BIG=${BENCH_RELAY_BIG:-2000}
HTTP=${BENCH_HTTP_PORT:-18286}
INGRESS=${BENCH_INGRESS_PORT:-19110}
PLATFORM=${BENCH_PLATFORM_PORT:-19111}
WORK=$(mktemp -d)
trap 'kill $(cat $WORK/*.pid 2>/dev/null) 2>/dev/null || true; rm -rf "$WORK"' EXIT
now() { date +%s.%N; }
stat_of() { curl -sf "http://127.0.0.1:$PLATFORM/stats" | python3 -c "import json,sys; print(json.load(sys.stdin)['$1'])"; }
backlog() { curl -sf -m 5 -H 'Authorization: Bearer bench-admin-token' "http://127.0.0.1:$HTTP/api/v1/relay/targets" | python3 -c "import json,sys; print(json.load(sys.stdin)['items'][0]['backlog'])" 2>/dev/null || echo -1; }

run() { # $1: faces, $2: picture KB
  local faces=$1 kb=$2
  $BIN/vigil-sim platform --listen 127.0.0.1:$PLATFORM --password up-secret > /dev/null 2>&1 &
  echo $! > "$WORK/platform.pid"
  sleep 0.3
  curl -sf -X POST -H 'Content-Type: application/json' -d '{"mode":"refuse"}' "http://127.0.0.1:$PLATFORM/control" > /dev/null
  cat > "$WORK/vigil.toml" <<TOML
[gateway]
data_dir = "$WORK/data-$kb"
[http]
listen = "127.0.0.1:$HTTP"
tokens = [ { token = "bench-admin-token", role = "admin" } ]
[gb28181]
enabled = false
[mqtt]
mode = "off"
[gat1400]
enabled = true
listen = "127.0.0.1:$INGRESS"
password = "viid-secret"
[admission]
policy = "open"
[[upstreams]]
name = "district"
protocol = "gat1400"
url = "http://127.0.0.1:$PLATFORM/VIID"
user_id = "42010400005030000001"
password = "up-secret"
events = ["face_capture"]
TOML
  RUST_LOG=warn $BIN/vigil run --config "$WORK/vigil.toml" > "$WORK/vigil.log" 2>&1 &
  echo $! > "$WORK/vigil.pid"
  for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$HTTP/api/v1/health" > /dev/null && break; sleep 0.2; done
  $BIN/vigil-sim checkpoint --server "http://127.0.0.1:$INGRESS" --password viid-secret --count 4 --image-kb "$kb" \
    bench --faces "$faces" --concurrency 32 | tail -1
  while [ "$(backlog)" -lt "$faces" ]; do sleep 0.2; done
  local t0 t1 left
  curl -sf -X POST -H 'Content-Type: application/json' -d '{"mode":"ok"}' "http://127.0.0.1:$PLATFORM/control" > /dev/null
  # The clock starts at the first delivery: the runner may still be waiting out its backoff
  # from the refusals, which is not throughput.
  while left=$(backlog); [ "$left" -ge "$faces" ]; do sleep 0.01; done
  t0=$(now)
  while [ "$(backlog)" -ne 0 ]; do sleep 0.05; done
  t1=$(now)
  faces=$left
  local unique dup
  unique=$(stat_of unique); dup=$(stat_of duplicates)
  printf 'relay: %d faces (timed from the first delivery) with %d KB pictures drained in %.2f s = %.0f objects/s, %.1f MB/s of pictures; platform: %d unique, %d duplicates\n' \
    "$faces" "$kb" "$(echo "$t1 - $t0" | bc -l)" "$(echo "$faces / ($t1 - $t0)" | bc -l)" \
    "$(echo "$faces * $kb / 1024 / ($t1 - $t0)" | bc -l)" "$unique" "$dup"
  kill "$(cat "$WORK/vigil.pid")" "$(cat "$WORK/platform.pid")"; wait 2>/dev/null || true
  rm -f "$WORK"/*.pid
}

run "$N" 1
run "$BIG" 100
