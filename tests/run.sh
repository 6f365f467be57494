#!/usr/bin/env bash
# The one test command: installs what the suite needs on a fresh machine
# (redis-server and chromium from Debian, the Python packages including the
# embedded database and Playwright, which drives that chromium: no browser is
# ever downloaded) and runs the whole suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
[ -x /usr/bin/chromium ] || missing+=(chromium)
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
python -m pip install -q --disable-pip-version-check -r requirements.txt
exec python -m pytest "$@"
