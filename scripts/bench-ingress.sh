#!/usr/bin/env bash
# GA/T 1400 ingress figures for BENCHMARKS.md: 4 checkpoints (vigil-sim checkpoint) push N
# faces, each with a P KB picture (all different, each fsynced before its record commits),
# 32 requests in flight, into a vigil with the view library only (SQLite FULL, no upstream).
# Prints objects/s and vigil's CPU per object. BIN: the vigil to measure (another checkout's
# release directory for a paired run; built here unless set); the load driver is always this
# checkout's simulator. Env: BENCH_INGRESS_FACES (10000), BENCH_INGRESS_KB (100).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/bench-common.sh
N=${BENCH_INGRESS_FACES:-10000}
KB=${BENCH_INGRESS_KB:-100}
HTTP=${BENCH_HTTP_PORT:-18287}
INGRESS=${BENCH_INGRESS_PORT:-19112}
cat > "$WORK/vigil.toml" <<TOML
[gateway]
data_dir = "$WORK/data"
[http]
listen = "127.0.0.1:$HTTP"
[gb28181]
enabled = false
[mqtt]
mode = "off"
[rtsp]
enabled = false
[gat1400]
enabled = true
listen = "127.0.0.1:$INGRESS"
password = "viid-secret"
[admission]
policy = "open"
TOML
start_vigil "$HTTP"
C0=$(cpu)
LINE=$($SIM/vigil-sim checkpoint --server "http://127.0.0.1:$INGRESS" --password viid-secret --count 4 --image-kb "$KB" \
  bench --faces "$N" --concurrency 32 | tail -1)
C1=$(cpu)
echo "$LINE"
printf 'vigil CPU: %.2f core-s = %.0f us per object\n' "$(echo "($C1 - $C0) / $TCK" | bc -l)" \
  "$(echo "1000000 * ($C1 - $C0) / $TCK / $N" | bc -l)"
