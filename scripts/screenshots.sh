#!/usr/bin/env bash
# The dashboard's screenshots in docs/images/ (dashboard.png, the operator's live view, is the
# README's picture; reconciliation.png, partner.png, partner-live.png, integration.png), made by
# the browser tests of the views against a simulated system. Needs what `make test` needs
# (PostgreSQL, Debian's Chromium: scripts/test-deps.sh installs them).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${VENV:-.venv}/bin
[ -x "$BIN/pytest" ] || { echo "no $BIN/pytest: run make venv first (or set VENV)" >&2; exit 1; }
export SYMBIONT_SCREENSHOTS="$PWD/docs/images"
mkdir -p "$SYMBIONT_SCREENSHOTS"
"$BIN/pytest" -q -p no:cacheprovider tests/test_dashboard_live.py "$@"
ls -1 "$SYMBIONT_SCREENSHOTS"/*.png
