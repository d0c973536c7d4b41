#!/usr/bin/env bash
# Installs every system package that building, running and testing vigil needs.
# Idempotent: packages already present are skipped, so a second run is fast.
# Debian (bookworm) with apt-get; run as root or with sudo available.
set -euo pipefail

PACKAGES=(
  # build
  build-essential pkg-config clang libclang-dev
  # snapshots and video diagnosis (ffmpeg-next) and media checks in tests
  ffmpeg libavcodec-dev libavformat-dev libavutil-dev libswscale-dev libavfilter-dev libavdevice-dev
  # real peers for the tests
  mosquitto mosquitto-clients
  postgresql postgresql-client
  chromium fonts-wqy-microhei
  baresip kamailio sip-tester
  python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-tools
  gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-ugly gstreamer1.0-plugins-bad
  # load tools and operator conveniences
  wrk sqlite3 curl bc
)

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#PACKAGES[@]} system packages present"
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# Services must not be started by the package scripts on CI machines (policy-rc.d),
# scripts/services.sh starts what the tests need.
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
echo "install-deps: done"
