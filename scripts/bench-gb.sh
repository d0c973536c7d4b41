#!/usr/bin/env bash
# GB/T 28181 whole-process figures for BENCHMARKS.md: a registration storm of 10,000
# devices (401 challenge + authenticated REGISTER each) and a keepalive flood, from
# vigil-sim gb-device on loopback UDP; vigil's CPU and RSS around them. Bounded; loopback only.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p vigil -p vigil-simulators --bins
BIN=./target/release
WORK=$(mktemp -d)
HTTP=${BENCH_HTTP_PORT:-18282}
SIP=${BENCH_SIP_PORT:-15090}
COUNT=${BENCH_DEVICES:-10000}
trap 'kill $(cat $WORK/pid 2>/dev/null) 2>/dev/null || true; rm -rf "$WORK"' EXIT
cat > "$WORK/vigil.toml" <<TOML
[gateway]
data_dir = "$WORK/data"
[http]
listen = "127.0.0.1:$HTTP"
[gb28181]
listen = "127.0.0.1:$SIP"
[[orgs]]
id = "qiaokou"
name = "硚口区"
kind = "district"
gb_prefix = "420104"
TOML
python3 - "$COUNT" > "$WORK/devices.csv" <<'PY'
import sys
print("id,name,kind,protocol,org_id,rtsp_url,profile")
for n in range(int(sys.argv[1])):
    print(f"4201040000132{n:07d},IPC {n},camera,gb28181,,,")
PY
$BIN/vigil import "$WORK/devices.csv" --config "$WORK/vigil.toml" | tail -1
$BIN/vigil run --config "$WORK/vigil.toml" > "$WORK/vigil.log" 2>&1 &
echo $! > "$WORK/pid"
until curl -sf "http://127.0.0.1:$HTTP/api/v1/health" >/dev/null; do sleep 0.05; done
PID=$(cat "$WORK/pid")
cpu() { awk '{print $14+$15}' /proc/$PID/stat; }
TCK=$(getconf CLK_TCK)
sleep 1
echo "RSS with $COUNT devices in the registry, none registered: $(grep VmRSS /proc/$PID/status)"
# First, on a quiet gateway (the storms below leave tens of thousands of queries to devices
# that the storm driver no longer answers, which take their 32 s to time out).
echo "== catalog of 10,000 channels (one NVR platform)"
$BIN/vigil-sim gb-device --server "127.0.0.1:$SIP" --count 1 --first 0 catalog --channels 10000 --api "http://127.0.0.1:$HTTP" || true
sleep 1
echo "RSS before the storm: $(grep VmRSS /proc/$PID/status)"
c0=$(cpu)
$BIN/vigil-sim gb-device --server "127.0.0.1:$SIP" --count "$COUNT" storm
c1=$(cpu)
echo "vigil CPU during the storm: $(( (c1 - c0) * 1000 / TCK )) ms"
sleep 2
curl -s "http://127.0.0.1:$HTTP/api/v1/online-rate" | head -c 120; echo
echo "RSS with $COUNT registered devices: $(grep VmRSS /proc/$PID/status)"
c0=$(cpu)
$BIN/vigil-sim gb-device --server "127.0.0.1:$SIP" --count "$COUNT" flood --rate "${BENCH_RATE:-30000}" --seconds 10
c1=$(cpu)
echo "vigil CPU during the flood (10 s + the storm before it): $(( (c1 - c0) * 1000 / TCK )) ms"
# Steady state: $COUNT devices keeping alive every 60 s is $COUNT/60 messages a second.
c0=$(cpu)
$BIN/vigil-sim gb-device --server "127.0.0.1:$SIP" --count "$COUNT" flood --rate $(( COUNT / 60 )) --seconds 30 &
for i in 1 2 3 4 5 6; do a=$(cpu); sleep 5; b=$(cpu); echo "  vigil CPU, seconds $(( i * 5 - 5 ))-$(( i * 5 )): $(( (b - a) * 1000 / TCK / 5 )) ms/s"; done
wait
c1=$(cpu)
echo "vigil CPU for 30 s of steady keepalives (plus one re-registration storm): $(( (c1 - c0) * 1000 / TCK )) ms"
echo "RSS after: $(grep VmRSS /proc/$PID/status)"
curl -s "http://127.0.0.1:$HTTP/metrics" | grep -E "^vigil_sip_registrations_total|^vigil_events_rejected_total"

