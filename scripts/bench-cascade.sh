#!/usr/bin/env bash
# GB/T 28181 cascade figure for BENCHMARKS.md (issue #18): a catalog of N channels delivered to
# an upper platform, paced by its answers, on loopback. SIPp (Debian sip-tester) plays the
# upper (tests/fixtures/sipp/upper_catalog.xml: it grants the registration, queries the
# catalog and answers 200 to each MESSAGE); vigil holds N GB/T 28181 cameras (imported; 1,000
# of them said alive through the API, the most one request takes). Prints the time from the upper's query to the last catalog MESSAGE it
# received (from SIPp's own message log), the items and SumNum it saw, and vigil's CPU.
# Env: BENCH_CHANNELS (10000).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/bench-common.sh
N=${BENCH_CHANNELS:-10000}
HTTP=${BENCH_HTTP_PORT:-18295}
UPPER=${BENCH_UPPER_PORT:-15090}
LOWER=${BENCH_LOWER_PORT:-15091}
TOKEN=bench-admin-token
base() {
  config_head
  config_off patrol gat1400 mqtt rtsp
  printf '[gb28181]\nlisten = "127.0.0.1:0"\n'
}
# 1. The cameras, imported into a vigil without the upstream (so the query finds them all).
base > "$WORK/vigil.toml"
start_vigil "$HTTP"
{ echo "id,name,kind,protocol,org_id,rtsp_url,profile"
  for i in $(seq 0 $((N - 1))); do printf '4201040000132%07d,camera %d,camera,gb28181,,,\n' "$i" "$i"; done
} | curl -sf -X POST -H "Authorization: Bearer $TOKEN" -H 'Content-Type: text/csv' --data-binary @- \
    "http://127.0.0.1:$HTTP/api/v1/devices/import" > /dev/null
# 1,000 of them alive (ON in the catalog).
python3 - "$N" <<'PY' > "$WORK/alive.json"
import json, sys
n = int(sys.argv[1])
print(json.dumps([{"device_id": f"4201040000132{i:07d}", "kind": "alive", "ttl": "1h"} for i in range(0, n, 2)][:1000]))
PY
curl -sf -X POST -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' --data-binary @"$WORK/alive.json" \
  "http://127.0.0.1:$HTTP/api/v1/observations" > /dev/null
kill "$PID"; wait "$PID" 2>/dev/null || true
# 2. The upper, then vigil with the upstream.
( cd "$WORK" && exec sipp -sf "$OLDPWD/tests/fixtures/sipp/upper_catalog.xml" -i 127.0.0.1 -p "$UPPER" -nostdin \
    -trace_msg -message_file "$WORK/sipp.log" -timeout 120s > /dev/null 2>&1 ) &
echo $! > "$WORK/sipp.pid"
{ base; cat <<TOML
[[upstreams]]
name = "city"
protocol = "gb28181"
server_id = "42010000002000000001"
server_addr = "127.0.0.1:$UPPER"
password = "12345678"
listen = "127.0.0.1:$LOWER"
TOML
} > "$WORK/vigil.toml"
C0=0
start_vigil "$HTTP"
C0=$(cpu)
for _ in $(seq 1 1200); do
  got=$(grep -c '<CmdType>Catalog</CmdType>' "$WORK/sipp.log" 2>/dev/null || true)
  [ "${got:-0}" -ge $(( (N + 7) / 8 + 1 )) ] && break
  sleep 0.1
done
C1=$(cpu)
python3 - "$WORK/sipp.log" "$N" <<'PY'
import re, sys
from datetime import datetime
text = open(sys.argv[1], encoding="latin-1").read()
# SIPp writes each message after a line "----- <date> <time>" and "UDP message sent/received".
blocks = re.split(r"-{10,} (\d{4}-\d\d-\d\d\s+\d\d:\d\d:\d\d\.\d+)", text)
msgs = [(datetime.strptime(" ".join(blocks[i].split()), "%Y-%m-%d %H:%M:%S.%f"), blocks[i + 1]) for i in range(1, len(blocks) - 1, 2)]
query = next(t for t, b in msgs if "sent" in b.split("\n", 2)[0] + b[:200] and "<Query>" in b and "<CmdType>Catalog" in b)
responses = [(t, b) for t, b in msgs if "<Response>" in b and "<CmdType>Catalog</CmdType>" in b and "MESSAGE sip:" in b]
items = sum(b.count("<Item>") for _, b in responses)
on = sum(b.count("<Status>ON</Status>") for _, b in responses)
sums = {re.search(r"<SumNum>(\d+)", b).group(1) for _, b in responses}
last = max(t for t, _ in responses)
print(f"catalog: {items} items in {len(responses)} MESSAGEs (SumNum {sorted(sums)}, {on} ON), "
      f"query to last MESSAGE {(last - query).total_seconds():.3f} s")
PY
printf 'vigil: CPU %.2f s from start to the last catalog MESSAGE\n' "$(echo "($C1 - $C0) / $TCK" | bc -l)"
