#!/usr/bin/env bash
# Fetch opencv-doc's sample footage (vtest.avi) into .cache/opencv-doc, unpacked, not
# installed: the camera tests play it. Run from anywhere; safe to run again; leaves
# nothing behind but .cache/opencv-doc (the .deb is unpacked in a scratch folder).
set -euo pipefail
cd "$(dirname "$0")/.."
data=.cache/opencv-doc/usr/share/doc/opencv-doc/examples/data/vtest.avi
if [ -f "$data" ]; then
  exit 0
fi
scratch=$(mktemp -d .cache-download.XXXXXX)
trap 'rm -rf "$scratch"' EXIT
(cd "$scratch" && { apt-get download opencv-doc 2>/dev/null || { apt-get update -qq && apt-get download opencv-doc; }; })
mkdir -p .cache
dpkg -x "$scratch"/opencv-doc_*.deb .cache/opencv-doc
echo "fetch-footage: $data"
