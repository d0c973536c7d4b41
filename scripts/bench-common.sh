# Sourced by the whole-process bench scripts that measure one vigil build: BIN (the build to
# measure: another checkout's release directory for a paired run, else this checkout's,
# built here), SIM (the load driver: always this checkout's), a work directory removed on
# exit with every process whose pid file is in it, and helpers to start vigil and read its
# CPU.
if [ -z "${BIN:-}" ]; then cargo build --release -q -p vigil -p vigil-simulators --bins; fi
BIN=${BIN:-./target/release}
SIM=${SIM:-./target/release}
WORK=$(mktemp -d)
trap 'kill $(cat $WORK/*.pid 2>/dev/null) 2>/dev/null || true; rm -rf "$WORK"' EXIT
now() { date +%s.%N; }
TCK=$(getconf CLK_TCK)

# start_vigil HTTP_PORT: runs $BIN/vigil on $WORK/vigil.toml and waits for its /health;
# sets PID.
start_vigil() {
  RUST_LOG=warn $BIN/vigil run --config "$WORK/vigil.toml" > "$WORK/vigil.log" 2>&1 &
  echo $! > "$WORK/vigil.pid"
  PID=$(cat "$WORK/vigil.pid")
  until curl -sf "http://127.0.0.1:$1/api/v1/health" > /dev/null; do sleep 0.05; done
}

# vigil's CPU so far, in clock ticks (user + system).
cpu() { awk '{print $14+$15}' /proc/$PID/stat; }

# The head of a bench's vigil.toml: its data directory and the API on $HTTP with the admin
# token $TOKEN. Needs HTTP and TOKEN set.
config_head() {
  printf '[gateway]\ndata_dir = "%s"\n[http]\nlisten = "127.0.0.1:%s"\ntokens = [ { token = "%s", role = "admin" } ]\n' \
    "$WORK/data" "$HTTP" "$TOKEN"
}

# Sections that switch off what a bench does not measure: any of gat1400, mqtt, rtsp, patrol.
config_off() {
  for s in "$@"; do
    case $s in
      gat1400) printf '[gat1400]\nenabled = false\n' ;;
      mqtt) printf '[mqtt]\nmode = "off"\n' ;;
      rtsp) printf '[rtsp]\nenabled = false\n' ;;
      patrol) printf '[patrol]\nenabled = false\n' ;;
    esac
  done
}

# GET $1 from vigil's API with the admin token.
api() { curl -sf -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$HTTP/api/v1$1"; }
