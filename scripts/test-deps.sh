#!/usr/bin/env bash
# What the test suite needs from the system, installed and started when missing:
# PostgreSQL (127.0.0.1:5432, trust for postgres), Mosquitto, the real Alertmanager (alert
# delivery tests), Debian's Chromium (dashboard tests), poppler (statement PDFs) and promtool
# (Debian's prometheus package: the monitoring tests check the Prometheus config, alert rules
# and dashboard queries with it; where systemd runs, the package also starts a Prometheus).
# Called by `make test`; safe to run again (it does nothing when all is there).
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
SUDO=""
if [ "$(id -u)" != 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO=sudo; fi
fi

missing=()
command -v pg_ctlcluster >/dev/null 2>&1 || missing+=(postgresql)
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || missing+=(mosquitto)
command -v prometheus-alertmanager >/dev/null 2>&1 || missing+=(prometheus-alertmanager)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v pdftoppm >/dev/null 2>&1 || missing+=(poppler-utils)
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ] && [ -z "$SUDO" ]; then
    echo "the tests need these Debian packages: ${missing[*]}" >&2
    echo "install them as root (apt-get install ${missing[*]}) and run make test again" >&2
    exit 1
  fi
  echo "installing what the tests need: ${missing[*]}"
  log=$(mktemp)
  if ! { $SUDO apt-get update -qq && $SUDO apt-get install -y -qq "${missing[@]}"; } >"$log" 2>&1; then
    cat "$log" >&2
    echo "could not install ${missing[*]} (apt-get's output above)" >&2
    exit 1
  fi
  rm -f "$log"
  if [[ " ${missing[*]} " == *" postgresql "* ]]; then
    # A fresh install asks for passwords on TCP; the tests connect as postgres@127.0.0.1.
    for hba in /etc/postgresql/*/main/pg_hba.conf; do
      $SUDO sed -i -E 's/^(host\s+all\s+all\s+(127\.0\.0\.1\/32|::1\/128)\s+)\S+/\1trust/' "$hba"
    done
  fi
fi

if ! pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; then
  for version in $(ls /etc/postgresql); do
    $SUDO pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
  done
  for _ in $(seq 30); do pg_isready -h 127.0.0.1 -p 5432 -q && break; sleep 1; done
fi
if ! (exec 3<>/dev/tcp/127.0.0.1/1883) 2>/dev/null; then
  $SUDO mosquitto -d -c /etc/mosquitto/mosquitto.conf || true
fi
