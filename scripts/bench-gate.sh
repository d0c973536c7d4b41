#!/usr/bin/env bash
# The embedded MQTT broker end to end: one device logs in (its id and the default device
# password) and replays an offline cache of R records through vigil's embedded broker into
# committed events. With the gate (issue #15) every packet the device sends is read and its
# topic checked before rumqttd sees it. BIN: the vigil to measure (another checkout's release
# directory for a paired run; built here unless set); the load driver is this checkout's.
# Prints the time, the rate and vigil's CPU per record. Env: BENCH_REPLAY_COUNT (50000).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/bench-common.sh
R=${BENCH_REPLAY_COUNT:-50000}
PORT=${BENCH_MQTT_PORT:-18884}
HTTP=${BENCH_HTTP_PORT:-18288}
mkdir -p "$WORK/profiles"
sed -e 's#mqtt = "vigil/#mqtt = "bench/vigil/#' -e 's#topic = "vigil/#topic = "bench/vigil/#' -e 's#^route = "vigil/#route = "bench/vigil/#' \
  device-profiles/generic-json.toml > "$WORK/profiles/generic-json.toml"
cat > "$WORK/vigil.toml" <<TOML
[gateway]
data_dir = "$WORK/data"
[http]
listen = "127.0.0.1:$HTTP"
[gb28181]
enabled = false
[gat1400]
enabled = false
[rtsp]
enabled = false
[admission]
policy = "open"
[mqtt]
mode = "embedded"
listen = "127.0.0.1:$PORT"
profiles_dir = "$WORK/profiles"
inflight = 4096
TOML
start_vigil "$HTTP"
replayed() { curl -sf "http://127.0.0.1:$HTTP/metrics" | awk '/^vigil_profile_records_total\{outcome="(event|duplicate)",profile="generic.json@1"\}/ {s+=$2} END {print s+0}'; }
C0=$(cpu); T0=$(now)
$SIM/vigil-sim community --broker 127.0.0.1:$PORT --prefix bench replay --count "$R" --device XQ001-RP0001
until [ "$(replayed)" -ge "$R" ]; do sleep 0.05; done
T1=$(now); C1=$(cpu)
printf 'embedded broker: %d records from one device committed in %.2f s = %.0f/s; vigil CPU %.2f core-s = %.1f us per record\n' \
  "$R" "$(echo "$T1 - $T0" | bc -l)" "$(echo "$R / ($T1 - $T0)" | bc -l)" \
  "$(echo "($C1 - $C0) / $TCK" | bc -l)" "$(echo "1000000 * ($C1 - $C0) / $TCK / $R" | bc -l)"
grep -E "WARN|ERROR" "$WORK/vigil.log" | grep -v "No API tokens" | head -5 || true
