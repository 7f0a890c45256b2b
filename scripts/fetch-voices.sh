#!/usr/bin/env bash
# A recorded human voice for the held-out "voice" recordings of
# scripts/make_training_data.py: Debian's asterisk-core-sounds-en-wav (Allison Smith's
# prompts, digits/0.wav to 9.wav), unpacked into .cache/asterisk without installing it.
set -euo pipefail
cd "$(dirname "$0")/.."
dest=${1:-.cache/asterisk}
mkdir -p "$dest"
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
(cd "$scratch" && apt-get download asterisk-core-sounds-en-wav >/dev/null 2>&1)
dpkg -x "$scratch"/asterisk-core-sounds-en-wav_*.deb "$dest/root"
ls "$dest/root/usr/share/asterisk/sounds/en_US_f_Allison/digits/"[0-9].wav | wc -l | xargs echo "digit recordings:"
