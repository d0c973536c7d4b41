#!/usr/bin/env bash
# GB/T 28181 live video whole-process figures for BENCHMARKS.md (issue #17), on loopback:
#  1. N channels (vigil-sim gb-device: DEVICES devices x CHANNELS channels, H.264 640x360 at
#     2 Mbit/s from an ffmpeg clip, PS over RTP/UDP, DROP per mille of RTP packets dropped by
#     the simulator, each session starting at a random frame of the clip as a live encoder
#     would) pulled by one vigil with full health: vigil's CPU per Mbit/s, RSS per stream, and
#     the loss vigil counted against what the simulator dropped;
#  2. INVITE to the first keyframe over the same N pulls (each stream's
#     time_to_first_keyframe_ms, GOP 1 s): p50, p99, max.
# Env: BENCH_DEVICES (30), BENCH_CHANNELS (10), BENCH_SECONDS (60), BENCH_DROP_PERMILLE (10),
# BENCH_SINGLE_PORT (0: a port per stream; else every stream on that one port, by SSRC).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/bench-common.sh
D=${BENCH_DEVICES:-30}
C=${BENCH_CHANNELS:-10}
N=$((D * C))
SECS=${BENCH_SECONDS:-60}
DROP=${BENCH_DROP_PERMILLE:-10}
HTTP=${BENCH_HTTP_PORT:-18294}
SIP=${BENCH_SIP_PORT:-15070}
SINGLE=${BENCH_SINGLE_PORT:-0}
TOKEN=bench-admin-token
post() { curl -sf -X POST -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' -d "$2" "http://127.0.0.1:$HTTP/api/v1$1" > /dev/null; }
metric() { curl -sf "http://127.0.0.1:$HTTP/metrics" | awk -v m="$1" '$1 == m {print $2}'; }
rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$PID/status"; }
dev() { printf '4201040000132%07d' "$1"; }
chan() { printf '4201040000131%04d%03d' "$1" "$2"; }
channels_of() { { api "/devices/$1/channels" || true; } | { grep -o '"id"' || true; } | wc -l; }

{ config_head; config_off patrol gat1400 mqtt rtsp; cat <<TOML
[gb28181]
listen = "127.0.0.1:$SIP"
media_ports = "41000-41999"
media_single_port = $SINGLE
TOML
} > "$WORK/vigil.toml"
start_vigil "$HTTP"
RSS0=$(rss_kb)
{ echo "id,name,kind,protocol,org_id,rtsp_url,profile"
  for d in $(seq 0 $((D - 1))); do echo "$(dev "$d"),nvr $d,nvr,gb28181,,,"; done
} | curl -sf -X POST -H "Authorization: Bearer $TOKEN" -H 'Content-Type: text/csv' --data-binary @- \
    "http://127.0.0.1:$HTTP/api/v1/devices/import" > /dev/null
$SIM/vigil-sim gb-device --server "127.0.0.1:$SIP" --count "$D" live --keepalive 20 --channels "$C" \
  --drop-permille "$DROP" --max-sessions 64 --clips target/sim-clips < /dev/null > "$WORK/sim.log" 2>&1 &
echo $! > "$WORK/sim.pid"
SIMPID=$!
for _ in $(seq 1 600); do
  n=0; for d in $(seq 0 $((D - 1))); do n=$((n + $(channels_of "$(dev "$d")"))); done
  [ "$n" -ge "$N" ] && break
  sleep 0.5
done
echo "catalogs: $n of $N channels"
T0=$(now)
for d in $(seq 0 $((D - 1))); do
  for c in $(seq 0 $((C - 1))); do post "/devices/$(dev "$d")/channels/$(chan "$d" "$c")/stream" '{"hold":"30m"}'; done
done
for _ in $(seq 1 600); do
  p=$(curl -sf "http://127.0.0.1:$HTTP/metrics" | awk '/^vigil_rtsp_streams\{.*state="playing"/ {s += $2} END {print s + 0}')
  [ "$p" -ge "$N" ] && break
  sleep 0.5
done
echo "playing: $p of $N after $(echo "$(now) - $T0" | bc -l | cut -c1-5) s"
sleep 10
C0=$(cpu); B0=$(metric vigil_gb_bytes_total); S0=$(awk '{print $14+$15}' /proc/$SIMPID/stat)
sleep "$SECS"
C1=$(cpu); B1=$(metric vigil_gb_bytes_total); S1=$(awk '{print $14+$15}' /proc/$SIMPID/stat)
RSS=$(rss_kb)
CPU=$(echo "($C1 - $C0) / $TCK" | bc -l)
MBIT=$(echo "($B1 - $B0) * 8 / $SECS / 1000000" | bc -l)
printf 'vigil: %d channels, %.1f Mbit/s of video, CPU %.2f s in %d s = %.1f%% of a core; %.4f%% of a core per Mbit/s\n' \
  "$N" "$MBIT" "$CPU" "$SECS" "$(echo "$CPU / $SECS * 100" | bc -l)" "$(echo "$CPU / $SECS * 100 / $MBIT" | bc -l)"
printf 'vigil: RSS %d KB before, %d KB with %d streams = %.0f KB per stream\n' "$RSS0" "$RSS" "$N" "$(echo "($RSS - $RSS0) / $N" | bc -l)"
printf 'simulator: CPU %.1f%% of a core\n' "$(echo "($S1 - $S0) / $TCK / $SECS * 100" | bc -l)"
# Loss and first keyframes, per stream.
: > "$WORK/streams"
for d in $(seq 0 $((D - 1))); do
  for c in $(seq 0 $((C - 1))); do api "/devices/$(dev "$d")/channels/$(chan "$d" "$c")/stream" >> "$WORK/streams"; echo >> "$WORK/streams"; done
done
python3 - "$WORK/streams" "$DROP" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
lost = sum(r["rtp_loss"] for r in rows); got = sum(r["rtp_packets"] or 0 for r in rows)
print(f"loss: vigil counted {lost} lost of {lost + got} packets = {100 * lost / (lost + got):.3f}% (simulator drops {int(sys.argv[2]) / 10:.1f}%)")
t = sorted(r["time_to_first_keyframe_ms"] for r in rows if r["time_to_first_keyframe_ms"] is not None)
q = lambda p: t[min(len(t) - 1, int(p * len(t)))]
print(f"INVITE to first keyframe ({len(t)} streams, GOP 1 s): p50 {q(0.5)} ms, p99 {q(0.99)} ms, max {t[-1]} ms")
states = {}
for r in rows: states[r["state"]] = states.get(r["state"], 0) + 1
print("states:", states)
PY
curl -sf "http://127.0.0.1:$HTTP/metrics" | grep -E '^vigil_gb_(media_dropped|plays)' || true
