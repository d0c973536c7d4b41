#!/usr/bin/env bash
# Whole-process figures for BENCHMARKS.md: CSV import of 100,000 devices (CLI, SQLite),
# start-up with 100,000 devices, RSS, and GET /api/v1/online-rate?group_by=org under 50
# concurrent clients (our load driver and wrk from the same run). Loopback only; bounded.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p vigil -p vigil-simulators --bins
BIN=./target/release
WORK=$(mktemp -d)
PORT=${BENCH_PORT:-18181}
trap 'kill $(cat $WORK/pid 2>/dev/null) 2>/dev/null || true; [ -n "${BENCH_KEEP:-}" ] && echo "kept $WORK" || rm -rf "$WORK"' EXIT
cat > "$WORK/vigil.toml" <<TOML
[gateway]
data_dir = "$WORK/data"
[http]
listen = "127.0.0.1:$PORT"
tokens = [ { token = "bench-admin-token", role = "admin" } ]
[gb28181]
listen = "127.0.0.1:0"
[[orgs]]
id = "d"
name = "硚口区"
kind = "district"
gb_prefix = "420104"
TOML
# 500 org nodes: the district, 20 streets, 479 communities (seeded in config for the CLI import).
for s in $(seq 0 19); do printf '[[orgs]]\nid = "s%d"\nname = "街道%d"\nkind = "street"\nparent = "d"\n' "$s" "$s"; done >> "$WORK/vigil.toml"
for c in $(seq 0 478); do printf '[[orgs]]\nid = "c%d"\nname = "社区%d"\nkind = "community"\nparent = "s%d"\n' "$c" "$c" $((c % 20)); done >> "$WORK/vigil.toml"
kinds=(camera camera camera nvr access_control barrier vehicle_checkpoint face_checkpoint sensor intercom)
{
  echo "id,name,kind,protocol,org_id,rtsp_url,profile"
  for i in $(seq 0 99999); do printf 'dev-%06d,设备%d,%s,external,c%d,,\n' "$i" "$i" "${kinds[$((i % 10))]}" $((i % 479)); done
} > "$WORK/devices.csv"

echo "== vigil import (CLI, SQLite): 100,000 devices"
/usr/bin/time -f "import: %e s wall, %M KiB max RSS" $BIN/vigil import "$WORK/devices.csv" --config "$WORK/vigil.toml" 2>&1 | grep -v "^\s*$" | tail -2

start_vigil() {
  local t0; t0=$(date +%s.%N)
  $BIN/vigil run --config "$WORK/vigil.toml" > "$WORK/vigil.log" 2>&1 &
  echo $! > "$WORK/pid"
  until curl -sf "http://127.0.0.1:$PORT/api/v1/health" >/dev/null; do sleep 0.02; done
  echo "start-up to a healthy API with 100,000 devices: $(python3 -c "print(round($(date +%s.%N) - $t0, 3))") s"
}
start_vigil
# Evidence for 96% of the devices.
python3 - "$PORT" <<'PY'
import json, sys, urllib.request
port = sys.argv[1]
for start in range(0, 100000, 10000):
    batch = [{"device_id": f"dev-{i:06d}", "kind": "alive", "ttl": "24h"} for i in range(start, start + 10000) if i % 25]
    req = urllib.request.Request(f"http://127.0.0.1:{port}/api/v1/observations", data=json.dumps(batch).encode(),
                                 headers={"Authorization": "Bearer bench-admin-token", "Content-Type": "application/json"})
    urllib.request.urlopen(req).read()
PY
sleep 2
curl -s -H "Authorization: Bearer bench-admin-token" "http://127.0.0.1:$PORT/api/v1/online-rate" | head -c 200; echo
echo "RSS with 100,000 devices (after evidence): $(grep VmRSS /proc/$(cat $WORK/pid)/status)"
echo "== load driver: 50 clients, 20 s"
$BIN/vigil-load-api --api "http://127.0.0.1:$PORT" --token bench-admin-token rate --clients 50 --seconds 20
echo "== wrk: 2 threads, 50 connections, 20 s"
wrk -t2 -c50 -d20s --latency -H "Authorization: Bearer bench-admin-token" "http://127.0.0.1:$PORT/api/v1/online-rate?group_by=org" | sed -n '1,20p'
echo "RSS after load: $(grep VmRSS /proc/$(cat $WORK/pid)/status)"
kill -TERM "$(cat $WORK/pid)"; sleep 2
echo "== restart with 100,000 devices and their presence state"
start_vigil
echo "RSS after restart: $(grep VmRSS /proc/$(cat $WORK/pid)/status)"
sleep 10
echo "RSS 10 s after restart (gap rows written): $(grep VmRSS /proc/$(cat $WORK/pid)/status)"
