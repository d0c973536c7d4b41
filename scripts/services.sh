#!/usr/bin/env bash
# Starts the real peers the tests talk to, where they are not already running:
# PostgreSQL on 127.0.0.1:5432 (trust auth, database `test`) and Mosquitto on 127.0.0.1:1883.
set -euo pipefail

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() {
  for _ in $(seq 1 50); do port_open "$1" && return 0; sleep 0.2; done
  echo "services: nothing answers on 127.0.0.1:$1 ($2)" >&2
  return 1
}

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

if ! port_open 5432; then
  echo "services: starting PostgreSQL"
  ver=$(ls /etc/postgresql 2>/dev/null | sort -V | tail -n1)
  if [ -z "$ver" ]; then echo "services: PostgreSQL is not installed; run scripts/install-deps.sh" >&2; exit 1; fi
  conf=/etc/postgresql/$ver/main
  # Trust local TCP connections on loopback (test machines only).
  if ! grep -q "vigil-test" "$conf/pg_hba.conf"; then
    $SUDO sed -i '1i host all all 127.0.0.1/32 trust # vigil-test\nhost all all ::1/128 trust # vigil-test' "$conf/pg_hba.conf"
  fi
  $SUDO pg_ctlcluster --skip-systemctl-redirect "$ver" main start || $SUDO pg_ctlcluster "$ver" main start
  wait_port 5432 PostgreSQL
fi
# The database the tests start from.
if ! psql -h 127.0.0.1 -U postgres -tAc "SELECT 1 FROM pg_database WHERE datname='test'" 2>/dev/null | grep -q 1; then
  psql -h 127.0.0.1 -U postgres -c "CREATE DATABASE test" >/dev/null 2>&1 || \
    $SUDO -u postgres psql -c "CREATE DATABASE test" >/dev/null
fi

if ! port_open 1883; then
  echo "services: starting Mosquitto"
  $SUDO mosquitto -d -c /etc/mosquitto/mosquitto.conf 2>/dev/null || $SUDO mosquitto -d -p 1883
  wait_port 1883 Mosquitto
fi
echo "services: PostgreSQL 127.0.0.1:5432 and Mosquitto 127.0.0.1:1883 are up"
