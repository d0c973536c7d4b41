#!/usr/bin/env bash
# QUIC link figures for BENCHMARKS.md (issue #6), two vigil processes on loopback:
# 1. throughput: a community gateway builds a backlog of N faces (1 KB pictures) for its hub
#    while the hub is down; the hub starts, and the drain (timed from the first record the
#    hub acknowledged, each committed in the hub's own outbox before it is acknowledged) gives
#    events/s;
# 2. added latency at ~1,000 events/s: checkpoints push faces and vehicles into the lower
#    gateway for 20 s with the hub up; per event, the hub's commit time minus the lower
#    gateway's (both outboxes' delivery rows, same clock), p50 and p99.
# Env: BENCH_LINK_EVENTS (50000).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p vigil -p vigil-simulators --bins
BIN=./target/release
N=${BENCH_LINK_EVENTS:-50000}
LOWER_HTTP=18386; HUB_HTTP=18387; INGRESS=19210; QUIC=19211; PLATFORM=19212
WORK=$(mktemp -d)
trap 'kill $(cat $WORK/*.pid 2>/dev/null) 2>/dev/null || true; rm -rf "$WORK"' EXIT
now() { date +%s.%N; }
backlog() { curl -sf -m 5 -H 'Authorization: Bearer bench-admin-token' "http://127.0.0.1:$LOWER_HTTP/api/v1/relay/targets" \
  | python3 -c "import json,sys; print(json.load(sys.stdin)['items'][0]['backlog'])" 2>/dev/null || echo -1; }
wait_http() { for _ in $(seq 1 150); do curl -sf "http://127.0.0.1:$1/api/v1/health" > /dev/null && return; sleep 0.2; done; echo "no answer on $1"; exit 1; }

LOWER=42010400002000000101; HUB=42010400002000000100
$BIN/vigil certs --out "$WORK/certs" --san 127.0.0.1 $LOWER $HUB > /dev/null
$BIN/vigil-sim platform --listen 127.0.0.1:$PLATFORM --password city-secret > /dev/null 2>&1 &
echo $! > "$WORK/platform.pid"
common() { # $1 http port, $2 data dir
  cat <<TOML
[http]
listen = "127.0.0.1:$1"
tokens = [ { token = "bench-admin-token", role = "admin" } ]
[gb28181]
enabled = false
[mqtt]
mode = "off"
TOML
}
{ echo "[gateway]"; echo "id = \"$HUB\""; echo "data_dir = \"$WORK/hub\""; common $HUB_HTTP; cat <<TOML
[gat1400]
enabled = false
[quic]
listen = "127.0.0.1:$QUIC"
cert = "$WORK/certs/$HUB.pem"
key = "$WORK/certs/$HUB.key"
ca = "$WORK/certs/ca.pem"
[[upstreams]]
name = "city"
protocol = "gat1400"
url = "http://127.0.0.1:$PLATFORM/VIID"
user_id = "$HUB"
password = "city-secret"
events = ["face_capture", "vehicle_pass"]
TOML
} > "$WORK/hub.toml"
{ echo "[gateway]"; echo "id = \"$LOWER\""; echo "data_dir = \"$WORK/lower\""; common $LOWER_HTTP; cat <<TOML
[gat1400]
enabled = true
listen = "127.0.0.1:$INGRESS"
password = "viid-secret"
[admission]
policy = "open"
[quic]
cert = "$WORK/certs/$LOWER.pem"
key = "$WORK/certs/$LOWER.key"
ca = "$WORK/certs/ca.pem"
[[upstreams]]
name = "hub"
protocol = "quic"
url = "quic://127.0.0.1:$QUIC"
TOML
} > "$WORK/lower.toml"

RUST_LOG=warn $BIN/vigil run --config "$WORK/lower.toml" > "$WORK/lower.log" 2>&1 &
echo $! > "$WORK/lower.pid"
wait_http $LOWER_HTTP

drain() { # $1: records, $2: picture KB (0: none). The hub is down while the backlog builds.
  local n=$1 kb=$2 left t0 t1
  $BIN/vigil-sim checkpoint --server "http://127.0.0.1:$INGRESS" --password viid-secret --count 4 --image-kb "$kb" \
    bench --faces "$n" --concurrency 32 | tail -1
  while [ "$(backlog)" -lt "$n" ]; do sleep 0.2; done
  RUST_LOG=warn $BIN/vigil run --config "$WORK/hub.toml" >> "$WORK/hub.log" 2>&1 &
  echo $! > "$WORK/hub.pid"
  while left=$(backlog); [ "$left" -ge "$n" ]; do sleep 0.01; done
  t0=$(now)
  while [ "$(backlog)" -ne 0 ]; do sleep 0.05; done
  t1=$(now)
  printf 'link: %d events (%s) drained to the hub in %.2f s = %.0f events/s, each committed at the hub before it was acknowledged\n' \
    "$left" "$([ "$kb" = 0 ] && echo 'faces without pictures' || echo "faces with $kb KB pictures")" \
    "$(echo "$t1 - $t0" | bc -l)" "$(echo "$left / ($t1 - $t0)" | bc -l)"
}
drain "$N" 0
kill "$(cat "$WORK/hub.pid")"; wait "$(cat "$WORK/hub.pid")" 2>/dev/null || true
drain "$((N / 5))" 1

# Latency at ~1,000 events/s: 110 checkpoints (each waits for vigil's commit before its next
# record, so ~10/s each), records without pictures, for 20 s.
start_ms=$(python3 -c 'import time; print(int(time.time()*1000))')
$BIN/vigil-sim checkpoint --server "http://127.0.0.1:$INGRESS" --password viid-secret --count "${BENCH_LINK_CAMS:-110}" --image-kb 0 \
  live --every 0.05 > /dev/null 2>&1 &
echo $! > "$WORK/live.pid"
sleep 20
kill "$(cat "$WORK/live.pid")"; rm -f "$WORK/live.pid"
sleep 5
python3 - "$WORK/lower/vigil.db" "$WORK/hub/vigil.db" "$start_ms" <<'PY'
import sqlite3, sys
lower, hub, start = sys.argv[1], sys.argv[2], int(sys.argv[3])
# Faces and vehicles (the hub's city route takes those; the checkpoints' own status changes
# also cross the link but stop at the hub).
q = ("SELECT e.id, d.created_at FROM deliveries d JOIN events e ON e.seq = d.event_seq "
     "WHERE d.target = ? AND e.received_at >= ? AND e.kind IN ('face_capture', 'vehicle_pass')")
a = dict(sqlite3.connect(lower).execute(q, ("hub", start)).fetchall())
b = dict(sqlite3.connect(hub).execute(q, ("city", start)).fetchall())
lat = sorted(b[i] - a[i] for i in a if i in b)
if not lat:
    sys.exit("no events crossed the link")
secs = 20.0
pct = lambda p: lat[min(len(lat) - 1, int(len(lat) * p))]
print(f"link latency: {len(lat)} events at {len(a) / secs:.0f} events/s offered; lower commit -> hub commit p50 {pct(0.5)} ms, p99 {pct(0.99)} ms, max {lat[-1]} ms; {len(a) - len(lat)} not at the hub")
PY
# What the two gateways warned about meanwhile (a slow spell usually shows here).
for side in lower hub; do
  echo "$side warnings: $(grep -c WARN "$WORK/$side.log" || true)"
  { grep WARN "$WORK/$side.log" || true; } | sed -E 's/^[^ ]+ +//' | cut -c1-160 | sort | uniq -c | sort -rn | head -5
done
