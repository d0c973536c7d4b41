#!/usr/bin/env bash
# RTSP whole-process figures for BENCHMARKS.md (issue #4), all on loopback:
#  1. N concurrent streams (vigil-sim rtsp-camera, H.264 640x360 ~1 Mbit/s, RTSP/TCP
#     interleaved) pulled by one vigil with full health tracking (and diagnosis at its
#     default period): vigil's CPU per stream and per Mbit/s, RSS per stream;
#  2. the peer ratio: the same P streams pulled by P `ffmpeg -rtsp_transport tcp -i URL
#     -c copy -f null -` processes versus one vigil pulling P streams, CPU over the same window;
#  3. stall detection at 25 fps: S cameras that play 2 s then stall with TCP open, over and
#     over, until STALLS stalls were detected: p50 / p99 / max of the time from the last frame
#     to the detection (vigil logs it as "no frame for N ms").
# Env: BENCH_STREAMS (500), BENCH_PEER (50), BENCH_SECONDS (60), BENCH_STALLS (100).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p vigil -p vigil-simulators --bins
BIN=./target/release
N=${BENCH_STREAMS:-500}
P=${BENCH_PEER:-50}
SECS=${BENCH_SECONDS:-60}
STALLS=${BENCH_STALLS:-100}
RTSP=${BENCH_RTSP_PORT:-18554}
HTTP=${BENCH_HTTP_PORT:-18284}
WORK=$(mktemp -d)
trap 'kill $(cat $WORK/*.pid 2>/dev/null) 2>/dev/null || true; pkill -P $$ ffmpeg 2>/dev/null || true; rm -rf "$WORK"' EXIT
TCK=$(getconf CLK_TCK)
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
metric() { curl -sf "http://127.0.0.1:$HTTP/metrics" | awk -v m="$1" '$1 == m {print $2}'; }
api() { curl -sf -H 'Authorization: Bearer bench-admin-token' "http://127.0.0.1:$HTTP/api/v1$1"; }

$BIN/vigil-sim rtsp-camera --listen 127.0.0.1:$RTSP --clips target/sim-clips --stall-after 2 > "$WORK/sim.out" 2> "$WORK/sim.log" &
echo $! > "$WORK/sim.pid"
for _ in $(seq 1 100); do grep -q rtsp:// "$WORK/sim.out" 2>/dev/null && break; sleep 0.2; done

start_vigil() { # $1: log file
  cat > "$WORK/vigil.toml" <<TOML
[gateway]
data_dir = "$WORK/data-$RANDOM"
[http]
listen = "127.0.0.1:$HTTP"
tokens = [ { token = "bench-admin-token", role = "admin" } ]
[gb28181]
enabled = false
[gat1400]
enabled = false
[mqtt]
mode = "off"
[rtsp]
backoff_min = "200ms"
backoff_max = "1s"
TOML
  RUST_LOG=info $BIN/vigil run --config "$WORK/vigil.toml" > "$1" 2>&1 &
  echo $! > "$WORK/vigil.pid"
  for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$HTTP/api/v1/health" > /dev/null && break; sleep 0.2; done
}
stop_vigil() { kill "$(cat "$WORK/vigil.pid")"; wait "$(cat "$WORK/vigil.pid")" 2>/dev/null || true; rm -f "$WORK/vigil.pid"; }
import() { # $1: path prefix (live, stall), $2: count
  { echo "id,name,kind,protocol,org_id,rtsp_url,profile"
    for i in $(seq 1 "$2"); do echo "cam-$i,cam $i,camera,rtsp,,rtsp://127.0.0.1:$RTSP/$1/$i,"; done
  } | curl -sf -X POST -H 'Authorization: Bearer bench-admin-token' -H 'Content-Type: text/csv' --data-binary @- \
      "http://127.0.0.1:$HTTP/api/v1/devices/import" > /dev/null
}
wait_playing() { # $1: count
  for _ in $(seq 1 300); do
    local n; n=$(curl -sf "http://127.0.0.1:$HTTP/metrics" | awk '/^vigil_rtsp_streams\{.*state="playing"/ {s += $2} END {print s + 0}')
    [ "$n" -ge "$1" ] && return 0
    sleep 0.5
  done
  echo "only $n of $1 streams playing" >&2; return 1
}
measure_vigil() { # $1: streams, $2: seconds -> prints cpu_s mbit rss_kb
  local pid; pid=$(cat "$WORK/vigil.pid")
  local c0 b0 c1 b1
  c0=$(cpu_ticks "$pid"); b0=$(metric vigil_rtsp_bytes_total)
  sleep "$2"
  c1=$(cpu_ticks "$pid"); b1=$(metric vigil_rtsp_bytes_total)
  echo "$(echo "($c1 - $c0) / $TCK" | bc -l) $(echo "($b1 - $b0) * 8 / $2 / 1000000" | bc -l) $(rss_kb "$pid")"
}

echo "== 1. $N streams, one vigil, $SECS s =="
start_vigil "$WORK/vigil1.log"
sleep 2
RSS0=$(rss_kb "$(cat "$WORK/vigil.pid")")
import live "$N"
wait_playing "$N"
sleep 10 # past start-up (first keyframes, the first diagnosis of every stream)
read -r CPU MBIT RSS < <(measure_vigil "$N" "$SECS")
printf 'vigil: %d streams, %.0f Mbit/s ingest, CPU %.2f s in %d s = %.1f%% of a core; %.4f%% of a core per Mbit/s; %.3f%% per stream\n' \
  "$N" "$MBIT" "$CPU" "$SECS" "$(echo "$CPU / $SECS * 100" | bc -l)" "$(echo "$CPU / $SECS * 100 / $MBIT" | bc -l)" "$(echo "$CPU / $SECS * 100 / $N" | bc -l)"
printf 'vigil: RSS %d KB with no stream, %d KB with %d = %.0f KB per stream\n' "$RSS0" "$RSS" "$N" "$(echo "($RSS - $RSS0) / $N" | bc -l)"
curl -sf "http://127.0.0.1:$HTTP/metrics" | grep -E '^vigil_rtsp_(streams|session_failures_total)' || true
stop_vigil

echo "== 2. $P streams: vigil vs $P ffmpeg processes, $SECS s each =="
start_vigil "$WORK/vigil2.log"
import live "$P"
wait_playing "$P"
sleep 5
read -r VCPU VMBIT _ < <(measure_vigil "$P" "$SECS")
stop_vigil
PIDS=()
for i in $(seq 1 "$P"); do
  ffmpeg -nostdin -v error -rtsp_transport tcp -i "rtsp://127.0.0.1:$RTSP/live/$i" -c copy -f null - > /dev/null 2>&1 &
  PIDS+=($!)
done
sleep 5
F0=0; for p in "${PIDS[@]}"; do F0=$((F0 + $(cpu_ticks "$p"))); done
sleep "$SECS"
F1=0; for p in "${PIDS[@]}"; do F1=$((F1 + $(cpu_ticks "$p"))); done
kill "${PIDS[@]}" 2>/dev/null || true
wait "${PIDS[@]}" 2>/dev/null || true
FCPU=$(echo "($F1 - $F0) / $TCK" | bc -l)
printf 'vigil: %d streams (%.0f Mbit/s), CPU %.2f s; ffmpeg x%d: CPU %.2f s; ratio vigil/ffmpeg = %.3f\n' \
  "$P" "$VMBIT" "$VCPU" "$P" "$FCPU" "$(echo "$VCPU / $FCPU" | bc -l)"

echo "== 3. stall detection at 25 fps: until $STALLS stalls =="
start_vigil "$WORK/vigil3.log"
import stall 20
for _ in $(seq 1 600); do
  n=$(grep -c 'no frame for' "$WORK/vigil3.log" || true)
  [ "$n" -ge "$STALLS" ] && break
  sleep 0.5
done
stop_vigil
grep -o 'no frame for [0-9]* ms' "$WORK/vigil3.log" | awk '{print $4}' | sort -n > "$WORK/stalls.txt"
COUNT=$(wc -l < "$WORK/stalls.txt")
pick() { awk -v q="$1" -v n="$COUNT" 'NR == int((n - 1) * q) + 1 {print; exit}' "$WORK/stalls.txt"; }
printf 'stall detection: %d stalls; from the last frame: p50 %d ms, p99 %d ms, max %d ms\n' "$COUNT" "$(pick 0.5)" "$(pick 0.99)" "$(tail -1 "$WORK/stalls.txt")"
