#!/usr/bin/env bash
# Fails if generated/ differs from what the spec produces now.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$root/codegen/generate.sh" "$tmp/generated"
if ! diff -r "$root/generated" "$tmp/generated" >"$tmp/diff"; then
  cat "$tmp/diff" >&2
  echo "generated/ is stale or was edited by hand: run 'make generate' and commit spec/ and generated/ together." >&2
  exit 1
fi
echo "generated/ matches spec/compositions.yaml"
