#!/usr/bin/env bash
# System packages the tests need: ffmpeg (score-video decodes videos with it). Debian/Ubuntu.
set -euo pipefail
command -v ffmpeg >/dev/null && command -v ffprobe >/dev/null && exit 0
sudo=""
[ "$(id -u)" = 0 ] || sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get install -y -q --no-install-recommends ffmpeg \
    || { $sudo apt-get update -q && $sudo apt-get install -y -q --no-install-recommends ffmpeg; }
