#!/usr/bin/env bash
# The one test command: installs what the suite needs on a fresh machine
# (redis-server from Debian, the Python packages including the embedded
# database) and runs the whole suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v redis-server >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq redis-server >/dev/null
fi
python -m pip install -q --disable-pip-version-check -r requirements.txt
exec python -m pytest "$@"
