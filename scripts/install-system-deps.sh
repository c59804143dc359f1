#!/usr/bin/env bash
# Install the system packages openimm's tests need (Debian/Ubuntu), only those missing.
# PostgreSQL and Redis run from their binaries inside the test session; nothing is started here.
# `install-system-deps.sh demo`: only what `openimm demo` needs (ffmpeg, espeak-ng).
set -euo pipefail
need=()
command -v ffmpeg >/dev/null 2>&1 || need+=(ffmpeg)
command -v espeak-ng >/dev/null 2>&1 || need+=(espeak-ng)  # the demo's and ASR tests' speech
if [ "${1:-}" != "demo" ]; then
  command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
  ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
  command -v zip >/dev/null 2>&1 || need+=(zip)
  # the console's browser tests: headless Chromium driven through its chromedriver (Selenium)
  [ -x /usr/bin/chromium ] || need+=(chromium)
  [ -x /usr/bin/chromedriver ] || need+=(chromium-driver)
fi
if [ ${#need[@]} -eq 0 ]; then
  echo "system packages present"
  exit 0
fi
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "installing: ${need[*]}"
$sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}"
# The postgresql package may start a cluster as a service; the tests use their own.
