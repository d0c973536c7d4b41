#!/usr/bin/env bash
# make demo: vigil with config/examples/district.toml (Qiaokou district, Wuhan) and the
# district simulator, which registers a few hundred devices and drives their presence.
# Samples are taken every 10 s (instead of the assessment's hourly) so the charts fill
# while you watch. Ctrl-C stops both.
set -euo pipefail
cd "$(dirname "$0")/.."

PORT=${DEMO_PORT:-8080}
export VIGIL_ASSESSMENT__SAMPLE_EVERY=${DEMO_SAMPLE_EVERY:-10s}
export VIGIL_HTTP__LISTEN=127.0.0.1:$PORT
export VIGIL_GB28181__LISTEN=${DEMO_SIP_LISTEN:-127.0.0.1:5060}

./target/release/vigil run --config config/examples/district.toml &
VIGIL_PID=$!
trap 'kill $VIGIL_PID $SIM_PID 2>/dev/null; wait 2>/dev/null' EXIT INT TERM
SIM_PID=""

for _ in $(seq 1 100); do
  if curl -sf "http://127.0.0.1:$PORT/api/v1/health" >/dev/null; then break; fi
  sleep 0.2
done

./target/release/vigil-district --api "http://127.0.0.1:$PORT" --token demo-admin-token --devices "${DEMO_DEVICES:-400}" &
SIM_PID=$!

cat <<MSG

  vigil demo is running.
  Dashboard (viewer token in the link):  http://127.0.0.1:$PORT/?token=demo-viewer-token
  API example:  curl -H 'Authorization: Bearer demo-viewer-token' 'http://127.0.0.1:$PORT/api/v1/online-rate?group_by=org'
  Metrics:      curl http://127.0.0.1:$PORT/metrics
  Ctrl-C stops the gateway and the simulator.

MSG
wait $VIGIL_PID
