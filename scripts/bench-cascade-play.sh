#!/usr/bin/env bash
# GB/T 28181 cascade figure for BENCHMARKS.md (issue #18): N RTSP cameras (vigil-sim
# rtsp-camera, H.264 640x360 at BENCH_KBPS) pulled by vigil and forwarded as PS over RTP to an
# upper platform (vigil-sim upper --play N: it INVITEs every camera, UDP, its own SSRC, ACKs and
# counts what arrives). vigil's CPU over SECS seconds while only pulling, then over SECS seconds
# while also forwarding: the difference per Mbit/s forwarded is the forwarding's cost; also the
# whole (pull + forward) per Mbit/s, and the time from ACK to the first keyframe pack at the
# upper (p50/p99/max over the N plays).
# Env: BENCH_STREAMS (100), BENCH_KBPS (2000), BENCH_SECS (30).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/bench-common.sh
N=${BENCH_STREAMS:-100}
KBPS=${BENCH_KBPS:-2000}
SECS=${BENCH_SECS:-30}
HTTP=${BENCH_HTTP_PORT:-18297}
RTSP=${BENCH_RTSP_PORT:-18555}
TOKEN=bench-admin-token
$SIM/vigil-sim rtsp-camera --listen "127.0.0.1:$RTSP" --clips target/sim-clips --bitrate-kbps "$KBPS" > "$WORK/cams.out" 2>&1 &
echo $! > "$WORK/cams.pid"
for _ in $(seq 1 600); do grep -q rtsp:// "$WORK/cams.out" 2>/dev/null && break; sleep 0.2; done
{ config_head
  config_off patrol gat1400 mqtt
  printf '[gb28181]\nenabled = false\n'
  printf '[[upstreams]]\nname = "city"\nprotocol = "gb28181"\nserver_id = "42010000002000000001"\n'
  printf 'server_addr = "127.0.0.1:15390"\npassword = "12345678"\nlisten = "127.0.0.1:15391"\n'
} > "$WORK/vigil.toml"
start_vigil "$HTTP"
{ echo "id,name,kind,protocol,org_id,rtsp_url,profile"
  for i in $(seq 1 "$N"); do printf '4201040000132%07d,camera %d,camera,rtsp,,rtsp://127.0.0.1:%s/live/%d,\n' "$i" "$i" "$RTSP" "$i"; done
} | curl -sf -X POST -H "Authorization: Bearer $TOKEN" -H 'Content-Type: text/csv' --data-binary @- \
    "http://127.0.0.1:$HTTP/api/v1/devices/import" > /dev/null
playing() { curl -sf "http://127.0.0.1:$HTTP/metrics" | awk '/^vigil_rtsp_streams\{.*state="playing"/ {s += $2} END {print s + 0}'; }
for _ in $(seq 1 600); do [ "$(playing)" -ge "$N" ] && break; sleep 0.5; done
echo "pulling: $(playing) of $N cameras playing"
# 1. Pulling only.
C0=$(cpu); sleep "$SECS"; C1=$(cpu)
PULL=$(echo "($C1 - $C0) / $TCK" | bc -l)
# 2. The upper registers and plays every camera (the cameras are ON: online by their frames).
$SIM/vigil-sim upper --name city --listen 127.0.0.1:15390 --play "$N" --play-after 3 --report-every 1 \
  --http 127.0.0.1:15392 > "$WORK/upper.log" 2>&1 &
echo $! > "$WORK/upper.pid"
for _ in $(seq 1 600); do
  n=$(curl -sf http://127.0.0.1:15392/view | python3 -c 'import json,sys; v=json.load(sys.stdin); print(v.get("plays",{}).get("keyframes",0))' 2>/dev/null || echo 0)
  [ "$n" -ge "$N" ] && break
  sleep 0.2
done
sleep 2
C2=$(cpu); sleep "$SECS"; C3=$(cpu)
VIEW=$(curl -sf http://127.0.0.1:15392/view)
BOTH=$(echo "($C3 - $C2) / $TCK" | bc -l)
MBIT=$(echo "$VIEW" | python3 -c 'import json,sys; print(json.load(sys.stdin)["plays"]["mbit_s"])')
echo "$VIEW" > "$WORK/view.json"
python3 - "$WORK/view.json" <<'PY'
import json, sys
p = json.load(open(sys.argv[1]))["plays"]
k = p["first_key_ms"]
print(f"upper: {p['answered']} plays answered, {p['refused']} refused, {p['keyframes']} with a keyframe; "
      f"ACK to first keyframe p50 {k['p50']} ms, p99 {k['p99']} ms, max {k['max']} ms; {p['mbit_s']:.1f} Mbit/s received")
PY
python3 - "$PULL" "$BOTH" "$SECS" "$MBIT" "$N" <<'PY'
import sys
pull, both, secs, mbit, n = (float(x) for x in sys.argv[1:])
print(f"vigil: pulling only {pull / secs * 100:.1f} % of a core; pulling and forwarding {both / secs * 100:.1f} %; "
      f"forwarding {(both - pull) / secs * 100:.2f} % of a core for {mbit:.1f} Mbit/s = "
      f"{(both - pull) / secs * 100 / mbit:.4f} % per Mbit/s (whole, pull + forward: {both / secs * 100 / mbit:.4f} % per Mbit/s); "
      f"{(both - pull) / secs * 100 / n:.3f} % per forwarded stream")
PY
