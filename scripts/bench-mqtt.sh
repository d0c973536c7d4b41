#!/usr/bin/env bash
# MQTT whole-process figures for BENCHMARKS.md (issue #5), on a private Mosquitto:
#  1. the ceiling: mosquitto_sub (QoS 1, to /dev/null) consuming N access records that
#     `vigil-sim community burst` publishes at QoS 1;
#  2. vigil consuming the same load end to end into committed events (SQLite,
#     synchronous=FULL), acknowledging each message only after its commit;
#  3. one device replaying an offline cache of R records (ingested, deduplicated, committed).
# Loopback only; bounded. First prints what a system call and a page fault cost on the machine
# this hour (scripts/bench-machine.py). Prints the rates, the ratio, and the CPU per message of both
# consumers (vigil's CPU per committed event is the figure issue #14 holds at <= 15 us).
# BENCH_PERF=1 records vigil with `perf record -g` during phase 2 (perf.data in the cwd).
set -euo pipefail
cd "$(dirname "$0")/.."
# BIN: the binaries to measure (another checkout's, for a paired run); built here unless set.
if [ -z "${BIN:-}" ]; then cargo build --release -q -p vigil -p vigil-simulators --bins; fi
BIN=${BIN:-./target/release}
# The load driver: this checkout's simulator whichever vigil is measured.
SIM=${SIM:-$BIN}
N=${BENCH_MQTT_COUNT:-200000}
R=${BENCH_REPLAY_COUNT:-50000}
PORT=${BENCH_MQTT_PORT:-18883}
HTTP=${BENCH_HTTP_PORT:-18283}
WORK=$(mktemp -d)
cleanup() {
  local pids
  pids=$(cat "$WORK"/*.pid 2>/dev/null || true)
  kill $pids 2>/dev/null || true
  # Gone before the script ends, so that the next run finds the port free.
  for p in $pids; do
    for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.05; done
  done
  rm -rf "$WORK"
}
trap cleanup EXIT
MOSQUITTO=$(command -v mosquitto || echo /usr/sbin/mosquitto)
cat > "$WORK/mosquitto.conf" <<CONF
listener $PORT 127.0.0.1
allow_anonymous true
persistence false
max_inflight_messages ${BENCH_BROKER_INFLIGHT:-1000}
max_queued_messages 2000000
CONF
# A port already taken (an earlier run's broker not yet gone) would send the load to the wrong
# broker, or have the load driver wait for acknowledgements forever: stop here instead.
if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
  echo "bench-mqtt: 127.0.0.1:$PORT is taken (BENCH_MQTT_PORT picks another)" >&2; exit 1
fi
$MOSQUITTO -c "$WORK/mosquitto.conf" > "$WORK/mosquitto.log" 2>&1 &
echo $! > "$WORK/mosquitto.pid"
# Ready when it accepts a connection; a broker that exits stops the script here.
for _ in $(seq 100); do
  if ! kill -0 "$(cat "$WORK/mosquitto.pid")" 2>/dev/null; then
    echo "bench-mqtt: the private Mosquitto on 127.0.0.1:$PORT exited:" >&2; cat "$WORK/mosquitto.log" >&2; exit 1
  fi
  if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then break; fi
  sleep 0.05
done
now() { date +%s.%N; }

# 0. The machine's hour: what a system call and a first touch of fresh memory cost now. Both
#    consumers spend much of their CPU in the kernel (socket and WAL writes, page faults); on
#    the virtualised machines these figures come from, mosquitto_sub's own CPU per message
#    has ranged from 3.2 to 24 us between hours. Printed so that runs from different hours
#    can be told apart (BENCHMARKS.md, 2026-12-07).
SYSCALL_NS=$( { TIMEFORMAT='%3U %3S'; time dd if=/dev/zero of=/dev/null bs=1 count=500000 status=none; } 2>&1 | awk '{printf "%.0f", ($1 + $2) * 1e9 / 1000000}')
read -r FAULT_US HUGE_MS < <(python3 scripts/bench-machine.py)
THP=$(sed -n 's/.*\[\(.*\)\].*/\1/p' /sys/kernel/mm/transparent_hugepage/enabled 2>/dev/null || echo unknown)
printf 'machine: a system call %s ns (dd, 1-byte reads and writes); first touch of a 4 KiB page %s us, of a 2 MiB huge page %s ms (THP %s)\n' \
  "$SYSCALL_NS" "$FAULT_US" "$HUGE_MS" "$THP"

# 1. The ceiling.
( TIMEFORMAT='%3U %3S'; time mosquitto_sub -h 127.0.0.1 -p $PORT -q 1 -t 'bench/#' -C "$N" > /dev/null ) 2> "$WORK/sub.time" &
SUB=$!
sleep 0.5
T0=$(now)
$SIM/vigil-sim community --broker 127.0.0.1:$PORT --prefix bench burst --count "$N" --connections 4
wait $SUB
T1=$(now)
SUB_RATE=$(echo "$N / ($T1 - $T0)" | bc -l)
SUB_CPU=$(awk '{print $1 + $2}' "$WORK/sub.time")
printf 'mosquitto_sub: %d messages in %.2f s = %.0f/s; CPU %.2f core-s = %.1f us per message\n' "$N" "$(echo "$T1 - $T0" | bc -l)" "$SUB_RATE" \
  "$SUB_CPU" "$(echo "1000000 * $SUB_CPU / $N" | bc -l)"

# 2. vigil, end to end.
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
[admission]
policy = "open"
[mqtt]
mode = "external"
url = "mqtt://127.0.0.1:$PORT"
client_id = "vigil-bench"
profiles_dir = "$WORK/profiles"
inflight = 4096
TOML
$BIN/vigil run --config "$WORK/vigil.toml" > "$WORK/vigil.log" 2>&1 &
echo $! > "$WORK/vigil.pid"
PID=$(cat "$WORK/vigil.pid")
until curl -sf "http://127.0.0.1:$HTTP/api/v1/health" >/dev/null; do sleep 0.05; done
sleep 1
stored() { curl -sf "http://127.0.0.1:$HTTP/metrics" | awk '/^vigil_events_total\{kind="access",source="mqtt"\}/ {print $2}' | head -1; }
cpu() { awk '{print $14+$15}' /proc/$PID/stat; }
TCK=$(getconf CLK_TCK)
if [ "${BENCH_PERF:-0}" = 1 ]; then perf record -g -o perf.data -p "$PID" 2> "$WORK/perf.log" & PERF=$!; sleep 0.5; fi
threads() { for t in /proc/$PID/task/*; do echo "$(basename $t) $(awk '{print $14+$15}' $t/stat) $(cat $t/comm)"; done | sort; }
threads > "$WORK/threads.0"
C0=$(cpu); T0=$(now)
$SIM/vigil-sim community --broker 127.0.0.1:$PORT --prefix bench burst --count "$N" --connections 4
until [ "$(stored || echo 0)" -ge "$N" ] 2>/dev/null; do sleep 0.05; done
T1=$(now); C1=$(cpu)
if [ -n "${PERF:-}" ]; then kill -INT $PERF; wait $PERF || true; fi
VIGIL_RATE=$(echo "$N / ($T1 - $T0)" | bc -l)
printf 'vigil: %d events committed in %.2f s = %.0f/s; CPU %.2f core-s (%.0f%% of one core) = %.1f us per event\n' "$N" "$(echo "$T1 - $T0" | bc -l)" "$VIGIL_RATE" \
  "$(echo "($C1 - $C0) / $TCK" | bc -l)" "$(echo "100 * ($C1 - $C0) / $TCK / ($T1 - $T0)" | bc -l)" \
  "$(echo "1000000 * ($C1 - $C0) / $TCK / $N" | bc -l)"
printf 'ratio vigil / mosquitto_sub: %.2f\n' "$(echo "$VIGIL_RATE / $SUB_RATE" | bc -l)"
if [ "${BENCH_THREADS:-0}" = 1 ]; then
  threads > "$WORK/threads.1"
  echo "vigil's threads (CPU seconds during the burst):"
  awk -v t="$TCK" 'NR == FNR {before[$1] = $2; next} {d = $2 - ($1 in before ? before[$1] : 0); if (d > 0) printf "  %-8s %-20s %.2f\n", $1, $3, d / t}' "$WORK/threads.0" "$WORK/threads.1"
fi
grep -E "WARN|ERROR" "$WORK/vigil.log" | head -5 || true

# 3. An offline-cache replay from one device, sent twice (the second pass is all duplicates).
replayed() { curl -sf "http://127.0.0.1:$HTTP/metrics" | awk '/^vigil_profile_records_total\{outcome="(event|duplicate)",profile="generic.json@1"\}/ {s+=$2} END {print s+0}'; }
BASE=$(replayed)
T0=$(now)
$SIM/vigil-sim community --broker 127.0.0.1:$PORT --prefix bench replay --count "$R" --device XQ001-RP0001
until [ "$(replayed)" -ge $((BASE + R)) ]; do sleep 0.05; done
T1=$(now)
printf 'replay: %d records from one device ingested and committed in %.2f s\n' "$R" "$(echo "$T1 - $T0" | bc -l)"
T0=$(now)
$SIM/vigil-sim community --broker 127.0.0.1:$PORT --prefix bench replay --count "$R" --device XQ001-RP0001
until [ "$(replayed)" -ge $((BASE + 2 * R)) ]; do sleep 0.05; done
T1=$(now)
DUP=$(curl -sf "http://127.0.0.1:$HTTP/metrics" | awk '/^vigil_profile_records_total\{outcome="duplicate",profile="generic.json@1"\}/ {print $2}')
printf 'replay again: %d records deduplicated in %.2f s (duplicates counted: %s)\n' "$R" "$(echo "$T1 - $T0" | bc -l)" "$DUP"
