#!/usr/bin/env bash
# Copies the built site to $1, ready for any static host.
set -euo pipefail
dest=${1:?usage: make publish-docs DEST=<dir>}
root=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$dest"
cp -R "$root/docs/site/." "$dest/"
cp "$root/spec/compositions.yaml" "$dest/openapi.yaml"
echo "published to $dest: index.html, openapi.yaml"
