#!/usr/bin/env bash
# Serves the documentation from the real service and checks it in headless
# Chromium (browser-test.mjs). Needs Debian's chromium (.ci/run installs it).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin=${CARGO_TARGET_DIR:-$root/target}/debug/compositions-jobs
out=$root/target/docs
tmp=$(mktemp -d)
server=
cleanup() {
  if [ -n "$server" ] && kill -0 "$server" 2>/dev/null; then
    kill -TERM "$server"
    wait "$server" || true
  fi
  rm -rf "$tmp"
}
trap cleanup EXIT

COMPOSITIONS_DATA_DIR=$tmp COMPOSITIONS_DATABASE=sqlite:$tmp/jobs.db COMPOSITIONS_ADMIN_LISTEN=127.0.0.1:0 \
  "$bin" serve --dev --listen 127.0.0.1:0 2>"$tmp/server.log" &
server=$!
address=
for _ in $(seq 100); do
  address=$(sed -n 's/.*serving getAsyncJobStatus address=\([0-9.:]*\).*/\1/p' "$tmp/server.log")
  [ -n "$address" ] && break
  kill -0 "$server" 2>/dev/null || { cat "$tmp/server.log" >&2; exit 1; }
  sleep 0.1
done
[ -n "$address" ] || { echo "the server did not start" >&2; exit 1; }

mkdir -p "$out"
(cd "$root/docs" && node browser-test.mjs "http://$address/docs" "$out/screenshot.png")
