#!/usr/bin/env bash
# Property-based conformance: the release binary against spec/compositions.yaml.
#
# Starts the service on a free port with a fresh SQLite file, seeds jobs in every
# status, runs schemathesis with every check in positive and negative mode, and
# fails on any failure or if fewer than MIN_REQUESTS requests were made.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
bin=${CARGO_TARGET_DIR:-$root/target}/release/compositions-jobs
st=$root/.venv/bin/st
out=$root/target/contract
min_requests=${MIN_REQUESTS:-1000}
client=contract-mis

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

export COMPOSITIONS_DATA_DIR=$tmp COMPOSITIONS_DATABASE=sqlite:$tmp/jobs.db COMPOSITIONS_ADMIN_LISTEN=127.0.0.1:0
# The polling limit would answer most of these requests (1,100 on four ids) with
# 429, which positive_data_acceptance reads as refusing valid data; tests/suite/polling.rs
# covers it. Long polls are cut to a second: the spec's example asks for 25.
export COMPOSITIONS_POLLING__LIMIT_PER_SECOND=0 COMPOSITIONS_POLLING__MAX_WAIT=1s
"$bin" serve --dev --listen 127.0.0.1:0 2>"$tmp/server.log" &
server=$!
address=
for _ in $(seq 100); do
  address=$(sed -n 's/.*serving getAsyncJobStatus address=\([0-9.:]*\).*/\1/p' "$tmp/server.log")
  [ -n "$address" ] && break
  kill -0 "$server" 2>/dev/null || { cat "$tmp/server.log" >&2; exit 1; }
  sleep 0.1
done
[ -n "$address" ] || { echo "the server did not start" >&2; cat "$tmp/server.log" >&2; exit 1; }

# The ids listed in schemathesis.toml, in every status.
jobs() { "$bin" jobs "$@" >/dev/null; }
jobs create --client-id "$client" --id 89678f60-4cdc-4fe3-ae83-e8b3ebd35c59
jobs create --client-id "$client" --id 3c1f4a9e-0b7d-4e52-9d61-7a2b8c4e5f01
jobs complete 3c1f4a9e-0b7d-4e52-9d61-7a2b8c4e5f01 --href composition/0f8c2a61-3b4d-4e5f-9a7b-1c2d3e4f5a6b
jobs create --client-id "$client" --id 5e2d7b10-6c3a-4f89-b1e4-2d9c0a7f3b62
jobs fail 5e2d7b10-6c3a-4f89-b1e4-2d9c0a7f3b62 --code 1127 \
  --type FINAL_COMPOSITION_FOR_ENCOUNTER_ALREADY_EXISTS \
  --message "Final composition for this encounter already exists"
jobs create --client-id another-mis --id 7a9b3c5d-1e2f-4a6b-8c7d-9e0f1a2b3c4d
CONTRACT_TOKEN=$("$bin" dev token --client-id "$client")
export CONTRACT_TOKEN

rm -rf "$out" && mkdir -p "$out"
# From the temporary folder: schemathesis keeps its caches in the working directory.
(cd "$tmp" && "$st" --config-file "$root/tests/contract/schemathesis.toml" run \
  "$root/spec/compositions.yaml" \
  --url "http://$address" \
  --checks all \
  --mode all \
  --phases examples,coverage,fuzzing \
  --report junit,vcr \
  --report-junit-path "$out/junit.xml" \
  --report-vcr-path "$out/requests.yaml" \
  --no-color)

requests=$(grep -c '^- id:' "$out/requests.yaml")
echo "schemathesis made $requests requests; statuses:"
sed -n "s/^ *code: '\([0-9]*\)'/\1/p" "$out/requests.yaml" | sort | uniq -c
if [ "$requests" -lt "$min_requests" ]; then
  echo "fewer than $min_requests requests: raise generation.max-examples" >&2
  exit 1
fi
