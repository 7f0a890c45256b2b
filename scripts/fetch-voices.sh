#!/usr/bin/env bash
# A recorded human voice for the held-out "voice" recordings of
# scripts/make_training_data.py: Debian's asterisk-core-sounds-en-wav (Allison Smith's
# prompts, digits/0.wav to 9.wav), unpacked into .cache/asterisk, not installed. Run from
# anywhere; safe to run again; the .deb is unpacked in a scratch folder and removed.
set -euo pipefail
cd "$(dirname "$0")/.."
digits=.cache/asterisk/root/usr/share/asterisk/sounds/en_US_f_Allison/digits
if [ -f "$digits/9.wav" ]; then
  exit 0
fi
mkdir -p .cache/asterisk
scratch=$(mktemp -d .cache-download.XXXXXX)
trap 'rm -rf "$scratch"' EXIT
package=asterisk-core-sounds-en-wav
(cd "$scratch" && { apt-get download $package 2>/dev/null || { apt-get update -qq && apt-get download $package; }; })
dpkg -x "$scratch"/${package}_*.deb .cache/asterisk/root
echo "fetch-voices: $(ls "$digits"/[0-9].wav | wc -l) digit recordings in $digits"
