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
export VIGIL_MQTT__LISTEN=${DEMO_MQTT_LISTEN:-127.0.0.1:1884}
export VIGIL_GAT1400__LISTEN=${DEMO_GAT1400_LISTEN:-127.0.0.1:9100}
export VIGIL_RTSP__DIAGNOSIS_EVERY=${DEMO_DIAGNOSIS_EVERY:-20s}
# Patrol (轮巡) of every GB/T 28181 channel: the first round 40 s after start, then every 10 min.
export VIGIL_PATROL__FIRST_AFTER=${DEMO_PATROL_FIRST_AFTER:-40s}
export VIGIL_PATROL__EVERY=${DEMO_PATROL_EVERY:-10m}
export VIGIL_PATROL__CONCURRENCY=${DEMO_PATROL_CONCURRENCY:-32}

# The district's GA/T 1400 view library that vigil relays faces and vehicles to (the
# "district" upstream of the config): a simulator that counts what arrives.
./target/release/vigil-sim platform --listen 127.0.0.1:9101 --password change-me > /dev/null 2>&1 &
PLATFORM_PID=$!
# The city's: reached through the city hub (another vigil, config/examples/city-hub.toml)
# that the district gateway links to over QUIC with certificates from the tier's CA.
./target/release/vigil-sim platform --listen 127.0.0.1:9102 --password change-me > /dev/null 2>&1 &
CITY_PID=$!
# The district's and the city's GB/T 28181 platforms (vigil-sim upper): vigil registers to both
# as a lower platform (the gb28181 upstreams of the config); each keeps its own view of the
# cameras' ON/OFF from the catalog and the NOTIFYs (curl 127.0.0.1:15062/view).
./target/release/vigil-sim upper --name district --id 42010400002000000009 --listen 127.0.0.1:15060 \
  --http 127.0.0.1:15062 --report-every 0 > /dev/null 2>&1 &
GBUP1_PID=$!
./target/release/vigil-sim upper --name city --listen 127.0.0.1:15160 --http 127.0.0.1:15162 \
  --report-every 0 > /dev/null 2>&1 &
GBUP2_PID=$!
./target/release/vigil certs --out data/certs --san 127.0.0.1 42010400002000000001 42010000002000000001 > /dev/null
env -u VIGIL_HTTP__LISTEN -u VIGIL_GB28181__LISTEN -u VIGIL_MQTT__LISTEN -u VIGIL_GAT1400__LISTEN \
  RUST_LOG=${RUST_LOG:-warn} ./target/release/vigil run --config config/examples/city-hub.toml > data/city-hub.log 2>&1 &
HUB_PID=$!

./target/release/vigil run --config config/examples/district.toml &
VIGIL_PID=$!
trap 'kill $VIGIL_PID $SIM_PID $PLATFORM_PID $CITY_PID $HUB_PID $GBUP1_PID $GBUP2_PID 2>/dev/null; wait 2>/dev/null' EXIT INT TERM
SIM_PID=""

for _ in $(seq 1 100); do
  if curl -sf "http://127.0.0.1:$PORT/api/v1/health" >/dev/null; then break; fi
  sleep 0.2
done

./target/release/vigil-district --api "http://127.0.0.1:$PORT" --token demo-admin-token --devices "${DEMO_DEVICES:-400}" &
SIM_PID=$!

# GB/T 28181 cameras that really register over SIP with digest: 300 the operators listed
# (imported here; 6 of them stop keeping alive, one sends an alarm every 20 s), 20 nobody
# announced (they wait on the dashboard for approval).
SIP_PORT=${VIGIL_GB28181__LISTEN##*:}
{
  echo "id,name,kind,protocol,org_id,rtsp_url,profile"
  for n in $(seq 0 299); do printf '4201040000132%07d,国标摄像机 %d,camera,gb28181,,,\n' $((9000000 + n)) "$n"; done
} | curl -sf -X POST -H 'Authorization: Bearer demo-admin-token' -H 'Content-Type: text/csv' \
    --data-binary @- "http://127.0.0.1:$PORT/api/v1/devices/import" >/dev/null
./target/release/vigil-sim gb-device --server "127.0.0.1:$SIP_PORT" --count 300 --first 9000000 live --alarm-every 20 --silent 6 --clips target/sim-clips < /dev/null > /dev/null 2>&1 &
GB1_PID=$!
./target/release/vigil-sim gb-device --server "127.0.0.1:$SIP_PORT" --count 20 --first 9100000 live < /dev/null > /dev/null &
GB2_PID=$!
# Two NVRs of 8 channels each whose pictures patrol will judge: channel 2 black, 5 frozen,
# 6 answers and sends nothing (no_media), 7 is H.265; at most 4 preview links each (503 past
# that: patrol lowers its share for them).
printf 'id,name,kind,protocol,org_id,rtsp_url,profile\n42010400001329000300,硚口 NVR 一,nvr,gb28181,,,\n42010400001329000301,硚口 NVR 二,nvr,gb28181,,,\n' \
  | curl -sf -X POST -H 'Authorization: Bearer demo-admin-token' -H 'Content-Type: text/csv' \
    --data-binary @- "http://127.0.0.1:$PORT/api/v1/devices/import" >/dev/null
./target/release/vigil-sim gb-device --server "127.0.0.1:$SIP_PORT" --count 2 --first 9000300 live --channels 8 \
  --media-faults "2=black,5=frozen,6=no-rtp,7=h265" --max-sessions 4 --clips target/sim-clips < /dev/null > /dev/null 2>&1 &
GB3_PID=$!
trap 'kill $VIGIL_PID $SIM_PID $PLATFORM_PID $CITY_PID $HUB_PID $GB1_PID $GB2_PID $GB3_PID 2>/dev/null; wait 2>/dev/null' EXIT INT TERM

# Smart safe communities over MQTT (the embedded broker): 4 communities × 12 devices
# (Hikvision access terminals, Vzenith plate cameras at the barriers, alarm panels, generic
# JSON devices), mapped by the shipped device profiles. 10 per community are registered here;
# the last 2 announce themselves and wait in quarantine with their profile suggested. One
# device announces itself offline after 30 s; 1% of messages are malformed (see
# /api/v1/rejections); plate cameras flush offline caches now and then.
SITES="gutian-1,gutian-4,jiefang,zongguan-shuichang"
{
  echo "id,name,kind,protocol,org_id,rtsp_url,profile"
  for site in ${SITES//,/ }; do
    for i in $(seq 0 9); do
      case $((i % 6)) in
        0|1|2) kind=access_control; profile=hikvision.acs-event; label=门禁 ;;
        3) kind=barrier; profile=vzenith.ivs-plate; label=道闸车牌 ;;
        4) kind=sensor; profile=hikvision.alarm-panel; label=报警主机 ;;
        *) kind=access_control; profile=generic.json; label=通用门禁 ;;
      esac
      printf '%s-%04d,%s %s %d,%s,mqtt,%s,,%s\n' "$site" $((i + 1)) "$site" "$label" $((i + 1)) "$kind" "$site" "$profile"
    done
  done
  # GA/T 1400 checkpoint cameras (a face and a vehicle checkpoint).
  echo "42010400001210000001,解放大道人脸卡口,face_checkpoint,gat1400,checkpoint-jiefang-ave,,gat1400.face"
  echo "42010400001210000002,长丰大桥车辆卡口,vehicle_checkpoint,gat1400,checkpoint-changfeng-bridge,,gat1400.motor-vehicle"
} | curl -sf -X POST -H 'Authorization: Bearer demo-admin-token' -H 'Content-Type: text/csv' \
    --data-binary @- "http://127.0.0.1:$PORT/api/v1/devices/import" >/dev/null
./target/release/vigil-sim community --broker "$VIGIL_MQTT__LISTEN" live --sites "$SITES" --devices-per 12 --rate 4 < /dev/null > /dev/null &
MQ_PID=$!
./target/release/vigil-sim checkpoint --server "http://$VIGIL_GAT1400__LISTEN" --count 2 --image-kb 60 live --every 4 < /dev/null > /dev/null &
CK_PID=$!
trap 'kill $VIGIL_PID $SIM_PID $PLATFORM_PID $CITY_PID $HUB_PID $GB1_PID $GB2_PID $GB3_PID $MQ_PID $CK_PID 2>/dev/null; wait 2>/dev/null' EXIT INT TERM

# RTSP cameras (vigil-sim rtsp-camera, H.264 640x360 ~1 Mbit/s each): the one in the config
# (cam-gutian-001) and 8 more: 5 healthy, one that stalls with TCP open every few seconds,
# one black picture and one frozen picture (video quality diagnosis every 20 s here).
RTSP_LISTEN=127.0.0.1:8554
./target/release/vigil-sim rtsp-camera --listen "$RTSP_LISTEN" --clips target/sim-clips --stall-after 8 < /dev/null > /dev/null 2>&1 &
RT_PID=$!
{
  echo "id,name,kind,protocol,org_id,rtsp_url,profile"
  for i in 1 2 3 4 5; do printf 'cam-rtsp-%02d,社区监控 %d,camera,rtsp,gutian-%d,rtsp://%s/live/%d,\n' "$i" "$i" $(( i % 2 ? 1 : 4 )) "$RTSP_LISTEN" "$i"; done
  printf 'cam-rtsp-stall,时断时续的摄像机,camera,rtsp,jiefang,rtsp://%s/stall/1,\n' "$RTSP_LISTEN"
  printf 'cam-rtsp-black,黑屏摄像机,camera,rtsp,jiefang,rtsp://%s/black/1,\n' "$RTSP_LISTEN"
  printf 'cam-rtsp-frozen,画面冻结摄像机,camera,rtsp,zongguan-shuichang,rtsp://%s/frozen/1,\n' "$RTSP_LISTEN"
} | curl -sf -X POST -H 'Authorization: Bearer demo-admin-token' -H 'Content-Type: text/csv' \
    --data-binary @- "http://127.0.0.1:$PORT/api/v1/devices/import" >/dev/null
trap 'kill $VIGIL_PID $SIM_PID $PLATFORM_PID $CITY_PID $HUB_PID $GBUP1_PID $GBUP2_PID $GB1_PID $GB2_PID $GB3_PID $MQ_PID $CK_PID $RT_PID $VIEW_PID 2>/dev/null; wait 2>/dev/null' EXIT INT TERM

cat <<MSG

  vigil demo is running.
  Dashboard (viewer token in the link):  http://127.0.0.1:$PORT/?token=demo-viewer-token
  API example:  curl -H 'Authorization: Bearer demo-viewer-token' 'http://127.0.0.1:$PORT/api/v1/online-rate?group_by=org'
  Metrics:      curl http://127.0.0.1:$PORT/metrics
  GB/T 28181:   320 simulated cameras register at udp 127.0.0.1:$SIP_PORT (alarms: /api/v1/events);
                20 of them wait for approval on the dashboard (approve them with the admin token:
                ?token=demo-admin-token); 6 stop keeping alive and go offline; each answers INVITE
                with PS over RTP (open a channel's snapshot from the device view)
  Patrol:       轮巡 of every GB/T 28181 channel 40 s after start, then every 10 min (the
                dashboard's patrol card, /api/v1/patrol): two NVRs have a black, a frozen, a
                silent and an H.265 channel each
  Communities:  48 MQTT devices on mqtt://$VIGIL_MQTT__LISTEN (access, plate, alarm records:
                /api/v1/events?kind=access); 8 wait in quarantine with a suggested profile
  Checkpoints:  2 GA/T 1400 cameras at http://$VIGIL_GAT1400__LISTEN/VIID push faces and vehicles
                with images (/api/v1/events?kind=face_capture, pictures at /api/v1/images/HASH)
  RTSP:         9 cameras pulled from rtsp://$RTSP_LISTEN (vigil-sim): open one on the dashboard
                for its stream health and a snapshot; cam-rtsp-stall keeps stalling, cam-rtsp-black
                and cam-rtsp-frozen fail the picture diagnosis (the intact rate drops below online)
  Relay:        two upstreams, each on its own schedule (/api/v1/relay/targets, the dashboard's
                upstreams card): the district's view library by GA/T 1400 (vigil-sim platform on
                127.0.0.1:9101; access, alarm, status and online-rate records on its extension
                path: curl 127.0.0.1:9101/stats), and the city through a hub over QUIC (a second
                vigil, dashboard http://127.0.0.1:8081/?token=demo-viewer-token, log
                data/city-hub.log) that forwards to the city's view library (curl 127.0.0.1:9102/stats)
  Cascade:      vigil is a lower platform to two GB/T 28181 platforms (vigil-sim upper): the
                district's (every device with a GB/T 28181 id) and the city's (cameras and NVRs
                only). What each sees is on the dashboard's upstreams card ("上级所见") and at
                curl 127.0.0.1:15062/view and 127.0.0.1:15162/view; every 30 s a line below puts
                their online rate next to vigil's.
  Ctrl-C stops the gateway and the simulator.

MSG
# The uppers' view of the online rate next to vigil's own, every 30 s.
(
  while sleep 30; do
    rate() { curl -sf -H 'Authorization: Bearer demo-viewer-token' "$1" | python3 -c 'import json,sys; v=json.load(sys.stdin); r=v.get("online_rate", v.get("rate", 0)); print("%.1f%% (%s/%s)" % (r * 100, v.get("on", v.get("online")), v.get("channels", v.get("total"))))' 2>/dev/null || echo "n/a"; }
    echo "  online rate — vigil: $(rate "http://127.0.0.1:$PORT/api/v1/online-rate"), district platform sees: $(rate http://127.0.0.1:15062/view), city platform sees: $(rate http://127.0.0.1:15162/view)"
  done
) &
VIEW_PID=$!
wait $VIGIL_PID
