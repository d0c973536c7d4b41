#!/usr/bin/env bash
# GB/T 28181 cascade figure for BENCHMARKS.md (issue #18): presence transitions at RATE per
# second for SECS seconds, told to two upper platforms (vigil-sim upper: the district's and the
# city's, each subscribed to the catalog) as catalog NOTIFYs. vigil holds N cameras with
# GB/T 28181 ids (imported); the driver flips 2,000 of them alive/dead through the API in
# batches of RATE/10 every 100 ms. For every transition: the time from the driver's request
# to the first NOTIFY item for that channel and state at each upper (p50/p99/max; this
# includes the API request, the presence commit and the NOTIFY path), transitions never told,
# and each upper's final view against the driver's final state and vigil's online count.
# Before the transitions, vigil's CPU over BENCH_IDLE seconds with both uppers holding the
# catalog and nothing changing (what a quiet district costs per upper).
# Env: BENCH_CHANNELS (10000), BENCH_RATE (1000), BENCH_SECS (20), BENCH_IDLE (10).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/bench-common.sh
N=${BENCH_CHANNELS:-10000}
RATE=${BENCH_RATE:-1000}
SECS=${BENCH_SECS:-20}
IDLE=${BENCH_IDLE:-10}
HTTP=${BENCH_HTTP_PORT:-18296}
TOKEN=bench-admin-token
{ config_head
  config_off patrol gat1400 mqtt rtsp
  for u in district:15190:15191:15192 city:15290:15291:15292; do
    IFS=: read -r name sip lower view <<< "$u"
    printf '[[upstreams]]\nname = "%s"\nprotocol = "gb28181"\nserver_id = "42010000002000000001"\n' "$name"
    printf 'server_addr = "127.0.0.1:%s"\npassword = "12345678"\nlisten = "127.0.0.1:%s"\n' "$sip" "$lower"
    printf 'keepalive_interval = "10s"\n'
  done
} > "$WORK/vigil.toml"
start_vigil "$HTTP"
{ echo "id,name,kind,protocol,org_id,rtsp_url,profile"
  for i in $(seq 0 $((N - 1))); do printf '4201040000132%07d,camera %d,camera,gat1400,,,\n' "$i" "$i"; done
} | curl -sf -X POST -H "Authorization: Bearer $TOKEN" -H 'Content-Type: text/csv' --data-binary @- \
    "http://127.0.0.1:$HTTP/api/v1/devices/import" > /dev/null
for u in district:15190:15192 city:15290:15292; do
  IFS=: read -r name sip view <<< "$u"
  $SIM/vigil-sim upper --name "$name" --listen "127.0.0.1:$sip" --http "127.0.0.1:$view" --report-every 0 \
    --log-notifies > "$WORK/$name.log" 2>&1 &
  echo $! > "$WORK/upper-$name.pid"
done
# Both uppers registered, subscribed and holding the whole catalog.
for view in 15192 15292; do
  for _ in $(seq 1 600); do
    n=$(curl -sf "http://127.0.0.1:$view/view" | python3 -c 'import json,sys; print(json.load(sys.stdin)["channels"])' 2>/dev/null || echo 0)
    [ "$n" -ge "$N" ] && break
    sleep 0.1
  done
done
C0=$(cpu)
sleep "$IDLE"
C1=$(cpu)
printf 'vigil idle: CPU %.2f s over %s s (%.1f %% of a core) with two subscribed uppers and %s channels, nothing changing\n' \
  "$(echo "($C1 - $C0) / $TCK" | bc -l)" "$IDLE" "$(echo "100 * ($C1 - $C0) / $TCK / $IDLE" | bc -l)" "$N"
C0=$(cpu)
python3 - "$HTTP" "$TOKEN" "$RATE" "$SECS" "$WORK/transitions.txt" <<'PY'
import http.client, json, sys, time
port, token, rate, secs, out = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
batch, pool = rate // 10, 2000
conn = http.client.HTTPConnection("127.0.0.1", port)
headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
log = open(out, "w")
start = time.time()
for step in range(secs * 10):
    due = start + step / 10
    time.sleep(max(0.0, due - time.time()))
    first = (step * batch) % pool
    kind = "alive" if ((step * batch) // pool) % 2 == 0 else "dead"
    ids = [f"4201040000132{i:07d}" for i in range(first, first + batch)]
    body = json.dumps([{"device_id": d, "kind": kind, "ttl": "1h", "reason": "bench"} for d in ids])
    at = int(time.time() * 1000)
    conn.request("POST", "/api/v1/observations", body, headers)
    r = conn.getresponse(); r.read()
    if r.status != 202:
        sys.exit(f"observations answered {r.status}")
    for d in ids:
        log.write(f"{at} {d} {'ON' if kind == 'alive' else 'OFF'}\n")
print(f"driver: {secs * 10 * batch} transitions in {time.time() - start:.1f} s")
PY
C1=$(cpu)
sleep 3
python3 - "$WORK" "$HTTP" "$TOKEN" <<'PY'
import bisect, json, sys, urllib.request
work, port, token = sys.argv[1], sys.argv[2], sys.argv[3]
sent = [l.split() for l in open(f"{work}/transitions.txt")]
final = {}
for at, d, ev in sent:
    final[d] = ev == "ON"
req = urllib.request.Request(f"http://127.0.0.1:{port}/api/v1/online-rate", headers={"Authorization": f"Bearer {token}"})
vigil_online = json.load(urllib.request.urlopen(req))["online"]
for name, view in (("district", 15192), ("city", 15292)):
    told = {}
    for line in open(f"{work}/{name}.log"):
        p = line.split()
        if len(p) == 4 and p[0] == "notify":
            told.setdefault((p[2], p[3]), []).append(int(p[1]))
    for v in told.values():
        v.sort()
    lat, missing = [], 0
    for at, d, ev in sent:
        times = told.get((d, ev), [])
        i = bisect.bisect_left(times, int(at))
        if i == len(times):
            missing += 1
        else:
            lat.append(times[i] - int(at))
    lat.sort()
    q = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))] if lat else float("nan")
    seen = json.load(urllib.request.urlopen(f"http://127.0.0.1:{view}/view"))
    status = seen["status"]
    wrong = sum(1 for d, on in final.items() if status.get(d) != on)
    print(f"{name}: {len(lat)} of {len(sent)} transitions told, {missing} never; request to NOTIFY "
          f"p50 {q(0.5)} ms, p99 {q(0.99)} ms, max {lat[-1] if lat else 'n/a'} ms; final view: "
          f"{wrong} of {len(final)} flipped channels differ from the driver's, ON {seen['on']} vs vigil's online {vigil_online}")
PY
printf 'vigil: CPU %.2f s during the %s s of transitions (%.1f µs per transition and upper)\n' \
  "$(echo "($C1 - $C0) / $TCK" | bc -l)" "$SECS" "$(echo "($C1 - $C0) / $TCK * 1000000 / ($RATE * $SECS * 2)" | bc -l)"
