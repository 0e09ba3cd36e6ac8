#!/usr/bin/env bash
# Real Opera Phenix fields for the tests: the three sites (Version1, Version5, Version7) that ship in the
# pe2loaddata 0.2.0 sdist on PyPI, with their LoadData tables. Fetched once into tests/.cache (ignored by git).
set -euo pipefail
cd "$(dirname "$0")"
dest=.cache/pe2loaddata-0.2.0
[ -f "$dest/.complete" ] && exit 0
mkdir -p .cache
tmp=$(mktemp -d .cache/download.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
"${PYTHON:-python3}" -m pip download --quiet --no-deps --no-binary :all: pe2loaddata==0.2.0 -d "$tmp"
tar -xzf "$tmp"/pe2loaddata-0.2.0.tar.gz -C "$tmp"
rm -rf "$dest"
mv "$tmp"/pe2loaddata-0.2.0 "$dest"
touch "$dest/.complete"
