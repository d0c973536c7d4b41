#!/usr/bin/env bash
# The peer ratio of the GB/T 28181 issue: the same REGISTER load (vigil-sim gb-device storms of
# 10,000 devices, no digest) against Kamailio (Debian's, a minimal in-memory registrar, no
# database, no auth, 2 UDP workers) and against vigil with `gb28181.digest = false`.
# Reports registrations/s for each and vigil ÷ Kamailio. Loopback only; bounded.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p vigil -p vigil-simulators --bins
BIN=./target/release
WORK=$(mktemp -d)
COUNT=${BENCH_DEVICES:-10000}
trap 'kill $(cat $WORK/*.pid 2>/dev/null) 2>/dev/null || true; rm -rf "$WORK"' EXIT
MODS=$(ls -d /usr/lib/*/kamailio/modules | head -n1)
cat > "$WORK/kamailio.cfg" <<CFG
#!KAMAILIO
listen=udp:127.0.0.1:15080
children=2
log_stderror=yes
debug=0
mpath="$MODS"
loadmodule "tm.so"
loadmodule "sl.so"
loadmodule "pv.so"
loadmodule "usrloc.so"
loadmodule "registrar.so"
modparam("usrloc", "db_mode", 0)
request_route {
  if (method=="REGISTER") { save("location"); exit; }
  sl_send_reply("404", "Not here");
}
CFG
kamailio -f "$WORK/kamailio.cfg" -DD -E -P "$WORK/kam.pidfile" > "$WORK/kamailio.log" 2>&1 &
echo $! > "$WORK/kamailio.pid"
sleep 1
echo "== Kamailio $(kamailio -v | head -n1 | awk '{print $3}')"
for i in 1 2 3; do $BIN/vigil-sim gb-device --server 127.0.0.1:15080 --count "$COUNT" --first $((i * 20000)) storm; done | tee "$WORK/kam.out"

cat > "$WORK/vigil.toml" <<TOML
[gateway]
data_dir = "$WORK/data"
[http]
listen = "127.0.0.1:18383"
[gb28181]
listen = "127.0.0.1:15090"
digest = false
[admission]
policy = "open"
TOML
python3 - "$COUNT" > "$WORK/devices.csv" <<'PY'
import sys
print("id,name,kind,protocol,org_id,rtsp_url,profile")
for r in (1, 2, 3):
    for n in range(int(sys.argv[1])):
        print(f"4201040000132{r * 20000 + n:07d},IPC {n},camera,gb28181,,,")
PY
$BIN/vigil import "$WORK/devices.csv" --config "$WORK/vigil.toml" | tail -1
$BIN/vigil run --config "$WORK/vigil.toml" > "$WORK/vigil.log" 2>&1 &
echo $! > "$WORK/vigil.pid"
until curl -sf "http://127.0.0.1:18383/api/v1/health" >/dev/null; do sleep 0.05; done
echo "== vigil (digest off for this comparison)"
for i in 1 2 3; do $BIN/vigil-sim gb-device --server 127.0.0.1:15090 --count "$COUNT" --first $((i * 20000)) storm; done | tee "$WORK/vigil.out"
python3 - "$WORK/kam.out" "$WORK/vigil.out" <<'PY'
import re, sys
def best(path):
    rates = [float(m.group(1)) for m in re.finditer(r"\(([\d.]+) registrations/s\)", open(path).read())]
    return max(rates), sum(rates) / len(rates)
k, ka = best(sys.argv[1]); v, va = best(sys.argv[2])
print(f"registrations/s, best of 3 (mean): Kamailio {k:.0f} ({ka:.0f}), vigil {v:.0f} ({va:.0f}); vigil / Kamailio = {v / k:.2f} ({va / ka:.2f} on means)")
PY
