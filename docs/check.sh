#!/usr/bin/env bash
# Fails if the committed page differs from what the spec builds now.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$root/docs/build.sh" "$tmp/index.html"
if ! cmp -s "$tmp/index.html" "$root/docs/site/index.html"; then
  echo "docs/site/index.html is stale: run 'make docs' and commit it with the spec." >&2
  exit 1
fi
echo "docs/site matches spec/compositions.yaml"
