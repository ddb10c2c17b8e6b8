#!/usr/bin/env bash
# Regenerates the API crate from spec/compositions.yaml into the folder given as $1.
# The output is built in a fresh folder and then swapped in, so files that the spec
# no longer produces disappear too.
set -euo pipefail
out=${1:?usage: codegen/generate.sh OUTPUT_DIR}
root=$(cd "$(dirname "$0")/.." && pwd)
gen=${OPENAPI_GENERATOR:-$root/.venv/bin/openapi-generator-cli}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# The generator reads its ignore file from the output folder.
mkdir -p "$tmp/out"
cp "$root/codegen/ignore" "$tmp/out/.openapi-generator-ignore"
"$gen" generate \
  --config "$root/codegen/config.yaml" \
  --input-spec "$root/spec/compositions.yaml" \
  --output "$tmp/out" \
  >"$tmp/log" 2>&1 || { cat "$tmp/log" >&2; exit 1; }

rm -rf "$out"
mkdir -p "$(dirname "$out")"
mv "$tmp/out" "$out"
