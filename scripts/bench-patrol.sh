#!/usr/bin/env bash
# Patrol (轮巡) whole-process figure for BENCHMARKS.md (issue #17), on loopback: one round over
# DEVICES x CHANNELS simulated GB/T 28181 channels (vigil-sim gb-device: H.264 640x360 at
# 2 Mbit/s, GOP 1 s, each session starting at a random frame, IFameCmd honoured) at patrol
# concurrency CONC with the default hold (8 s): the round's duration, its outcomes, vigil's
# CPU over the round and the channels per second.
# Env: BENCH_DEVICES (100), BENCH_CHANNELS (100), BENCH_CONCURRENCY (32).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/bench-common.sh
D=${BENCH_DEVICES:-100}
C=${BENCH_CHANNELS:-100}
N=$((D * C))
CONC=${BENCH_CONCURRENCY:-32}
HTTP=${BENCH_HTTP_PORT:-18295}
SIP=${BENCH_SIP_PORT:-15071}
TOKEN=bench-admin-token
dev() { printf '4201040000132%07d' "$1"; }
channels_of() { { api "/devices/$1/channels" || true; } | { grep -o '"id"' || true; } | wc -l; }

{ config_head; config_off gat1400 mqtt rtsp; cat <<TOML
[gb28181]
listen = "127.0.0.1:$SIP"
media_ports = "42000-42999"
[patrol]
first_after = "24h"
concurrency = $CONC
per_device = 8
TOML
} > "$WORK/vigil.toml"
start_vigil "$HTTP"
{ echo "id,name,kind,protocol,org_id,rtsp_url,profile"
  for d in $(seq 0 $((D - 1))); do echo "$(dev "$d"),nvr $d,nvr,gb28181,,,"; done
} | curl -sf -X POST -H "Authorization: Bearer $TOKEN" -H 'Content-Type: text/csv' --data-binary @- \
    "http://127.0.0.1:$HTTP/api/v1/devices/import" > /dev/null
$SIM/vigil-sim gb-device --server "127.0.0.1:$SIP" --count "$D" live --keepalive 20 --channels "$C" \
  --max-sessions 64 --clips target/sim-clips < /dev/null > "$WORK/sim.log" 2>&1 &
echo $! > "$WORK/sim.pid"
for _ in $(seq 1 1200); do
  n=0; for d in $(seq 0 $((D - 1))); do n=$((n + $(channels_of "$(dev "$d")"))); done
  [ "$n" -ge "$N" ] && break
  sleep 1
done
echo "catalogs: $n of $N channels"
C0=$(cpu); T0=$(now)
curl -sf -X POST -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' -d '{}' "http://127.0.0.1:$HTTP/api/v1/patrol" > /dev/null
until api "/patrol?items=false" | grep -q '"ended_at":"'; do sleep 5; done
T1=$(now); C1=$(cpu)
api "/patrol?items=false" | python3 -c '
import json, sys
r = json.load(sys.stdin)["round"]
print("round: %s of %s channels, outcomes %s" % (r["done"], r["total"], r["counts"]))' || true
api "/patrol?items=true" | python3 -c '
import json, sys
for i in json.load(sys.stdin)["round"]["items"]:
    if i["outcome"] != "ok":
        print("not ok:", i["device_id"], i["channel_id"], i["outcome"], i["error"])' || true
SECS=$(echo "$T1 - $T0" | bc -l)
printf 'patrol: %d channels at concurrency %d in %.0f s (%.1f min) = %.2f channels/s; vigil CPU %.0f s = %.1f%% of a core, %.1f ms per channel\n' \
  "$N" "$CONC" "$SECS" "$(echo "$SECS / 60" | bc -l)" "$(echo "$N / $SECS" | bc -l)" \
  "$(echo "($C1 - $C0) / $TCK" | bc -l)" "$(echo "($C1 - $C0) / $TCK / $SECS * 100" | bc -l)" "$(echo "($C1 - $C0) / $TCK / $N * 1000" | bc -l)"
