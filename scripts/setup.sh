#!/usr/bin/env bash
# Set up fusiond in ./.venv: the Debian libraries it needs (when run as root), the
# package with its test tools, and the sample footage the tests play. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

# libportaudio2: sounddevice's PortAudio (the wheel does not bundle it on Linux);
# pulseaudio, pulseaudio-utils, libasound2-plugins: the virtual microphone the tests use.
# nodejs, npm: the test that runs docs/protocol.md's JavaScript client (skipped as a
# package when node and npm are already on the PATH, from NodeSource say).
# mosquitto: the MQTT broker the mqtt output's tests publish to (started by the tests).
debs=(libportaudio2 pulseaudio pulseaudio-utils libasound2-plugins mosquitto)
missing=()
for deb in "${debs[@]}"; do
  dpkg -s "$deb" >/dev/null 2>&1 || missing+=("$deb")
done
command -v node >/dev/null || missing+=(nodejs)
command -v npm >/dev/null || missing+=(npm)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "setup: please install: ${missing[*]} (sudo apt-get install ${missing[*]})" >&2
  fi
fi

python3 -m venv .venv
# torch first, pinned: a loose range would fetch the multi-GB CUDA build on a CPU-only box.
# On a CUDA machine, install the torch build you want first; the range in pyproject.toml
# (>=2.4,<3) accepts it.
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  .venv/bin/pip install -q torch==2.13.0
fi
.venv/bin/pip install -q -e '.[test,onnx,ray,speech,mqtt,view]'
# The test footage: opencv-doc's sample video, unpacked into .cache/ (not installed).
bash scripts/fetch-footage.sh
echo "setup: done; run .venv/bin/fusiond run --config config.toml"
