#!/usr/bin/env bash
# Builds the API documentation page from spec/compositions.yaml into the file $1:
# Redoc with its scripts inlined, so the page works offline. Deterministic: two
# builds of one spec are byte-identical (check.sh relies on it).
set -euo pipefail
out=${1:?usage: docs/build.sh OUTPUT_FILE}
root=$(cd "$(dirname "$0")/.." && pwd)
export REDOCLY_TELEMETRY=off REDOCLY_SUPPRESS_UPDATE_NOTICE=true NO_UPDATE_NOTIFIER=1
log=$(mktemp)
trap 'rm -f "$log"' EXIT
mkdir -p "$(dirname "$out")"
"$root/docs/node_modules/.bin/redocly" build-docs "$root/spec/compositions.yaml" \
  --inlineBundle \
  --title "getAsyncJobStatus — eHealth Compositions API" \
  --output "$out" >"$log" 2>&1 || { cat "$log" >&2; exit 1; }

# Redoc's attribution always loads its logo from cdn.redoc.ly, with no option to
# turn that off; draw it inline instead, so that the page fetches nothing.
logo="data:image/svg+xml,%3Csvg xmlns='http://www.w3.org/2000/svg' width='52' height='14'%3E%3Ctext x='0' y='11' font-family='sans-serif' font-size='11' fill='%23888'%3ERedocly%3C/text%3E%3C/svg%3E"
sed -i -e "s|https://cdn.redoc.ly/redoc/logo-mini-full.svg|$logo|" \
       -e "s|https://cdn.redoc.ly/redoc/logo-mini.svg|$logo|" "$out"
if grep -q 'cdn.redoc.ly' "$out"; then
  echo "the page still loads something from cdn.redoc.ly; update docs/build.sh" >&2
  exit 1
fi
