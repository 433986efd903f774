#!/usr/bin/env bash
# System packages the tests need (Debian/Ubuntu): ffmpeg (score-video decodes videos with it),
# prometheus (its promtool validates the alert rules and the live /metrics exposition), and
# chromium with chromium-driver (the page at / is tested in a real headless browser).
set -euo pipefail
missing=()
command -v ffmpeg >/dev/null && command -v ffprobe >/dev/null || missing+=(ffmpeg)
command -v promtool >/dev/null || missing+=(prometheus)
command -v chromium >/dev/null || missing+=(chromium)
command -v chromedriver >/dev/null || missing+=(chromium-driver)
[ ${#missing[@]} -eq 0 ] && exit 0
sudo=""
[ "$(id -u)" = 0 ] || sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get install -y -q --no-install-recommends "${missing[@]}" \
    || { $sudo apt-get update -q && $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"; }
