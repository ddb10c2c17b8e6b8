#!/usr/bin/env bash
# make bench-scale: how the service's costs grow with the jobs in its store, the
# distinct tokens it sees and the connections it holds. Each step is a fresh
# service process; bench/scale.py writes target/bench/scale.md and bench/scale.svg.
#
# - jobs: BENCH_SCALE_JOBS ("10000 100000 1000000") jobs bulk-inserted by SQL
#   (a tenth PENDING, the rest finished within the TTL), on SQLite and on a
#   private PostgreSQL instance (BENCH_SCALE_STORES, "sqlite postgres"), while
#   bench-tool load polls 5,000 jobs of 500 clients of its own at their
#   Retry-After: CPU per poll (and PostgreSQL's), RSS, p99.
# - tokens: BENCH_SCALE_TOKENS ("1000 10000 100000") clients, each with its own
#   token and one job, polled at Retry-After (SQLite): beyond the token cache's
#   10,000 entries every poll verifies an RSA signature. Each size beside bare
#   hyper at the same rate.
# - connections: BENCH_SCALE_WAITERS ("1000 10000 50000") idle keep-alive
#   connections, then as many long-poll waiters (ten a job), from 127.0.0.1-8:
#   RSS per connection and per waiter (deltas from the fresh process), wake-up
#   p50/p99 when another process finishes the jobs (SQLite).
#
# BENCH_SCALE_SECONDS (15) measured after BENCH_SCALE_WARMUP (12) per load step.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
job_sizes=${BENCH_SCALE_JOBS:-10000 100000 1000000}
stores=${BENCH_SCALE_STORES:-sqlite postgres}
token_sizes=${BENCH_SCALE_TOKENS:-1000 10000 100000}
waiter_sizes=${BENCH_SCALE_WAITERS:-1000 10000 50000}
seconds=${BENCH_SCALE_SECONDS:-15}
warmup=${BENCH_SCALE_WARMUP:-12}
out=$root/target/bench
bin=${CARGO_TARGET_DIR:-$root/target}/release
results=$out/scale.jsonl

"$root/scripts/prerequisites.sh" bench
# 50,000 connections on each side: as root the hard limit can be raised too.
ulimit -Hn 1048576 2>/dev/null || true
ulimit -n "$(ulimit -Hn)"
cargo build --quiet --release -p compositions-jobs -p compositions-bench
mkdir -p "$out"
: >"$results"
tmp=$(mktemp -d)
children=()
cleanup() {
  for pid in "${children[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  [ -n "${private_pg:-}" ] && as_postgres pg_ctl -D "$private_pg/data" -m immediate -w stop >/dev/null 2>&1
  rm -rf "$tmp"
}
trap cleanup EXIT
source "$root/bench/lib.sh"

service_env
export COMPOSITIONS_HTTP__MAX_CONNECTIONS=200000 COMPOSITIONS_HTTP__MAX_IN_FLIGHT=200000
export COMPOSITIONS_POLLING__MAX_WAIT=120s
export RUST_LOG=warn,compositions_jobs=info

start baseline "$bin/baseline"
baseline_pid=$pid baseline_address=$address

# json COMMAND...: the command's JSON line (printed also when it then fails, for
# wrong answers or errors), or null.
json() {
  local line
  line=$("$@") || echo "  failed: $*" >&2
  echo "${line:-null}"
}

# record SWEEP STORE SIZE TARGET JSON
record() {
  echo "{\"sweep\": \"$1\", \"store\": \"$2\", \"size\": $3, \"target\": \"$4\", \"clk_tck\": $(getconf CLK_TCK), \"result\": $5}" >>"$results"
}

# fresh STORE: an empty store; sets $url and, for PostgreSQL, $postmaster.
fresh() {
  postmaster=
  if [ "$1" = postgres ]; then
    private_postgres
    psql -q "$private_url" -c "DROP SCHEMA IF EXISTS scale CASCADE; CREATE SCHEMA scale" >/dev/null 2>&1
    url="$private_url?options=-csearch_path%3Dscale"
    postmaster=$postmaster_pid
  else
    rm -rf "$tmp/sqlite" && mkdir -p "$tmp/sqlite"
    url=sqlite:$tmp/sqlite/jobs.db
  fi
}

# bulk STORE COUNT: COUNT jobs in one INSERT (the service has made the table):
# a tenth PENDING, eight tenths DONE, a tenth FAILED, finished within the TTL.
bulk() {
  local started=$SECONDS
  if [ "$1" = postgres ]; then
    psql -q "$private_url" -v ON_ERROR_STOP=1 >/dev/null <<SQL
SET search_path = scale;
INSERT INTO jobs (id, client_id, kind, status, eta, links, error_code, error_type, error_message, created_at, finished_at)
SELECT gen_random_uuid(), 'mis-bulk-' || (g % 1000), 'create',
       CASE g % 10 WHEN 0 THEN 'PENDING' WHEN 9 THEN 'FAILED' ELSE 'DONE' END,
       now() + interval '1 day',
       CASE WHEN g % 10 BETWEEN 1 AND 8 THEN jsonb_build_array(jsonb_build_object('entity', 'eHealth/resources', 'href', 'composition/' || g)) END,
       CASE WHEN g % 10 = 9 THEN 1127 END,
       CASE WHEN g % 10 = 9 THEN 'FINAL_COMPOSITION_FOR_ENCOUNTER_ALREADY_EXISTS' END,
       CASE WHEN g % 10 = 9 THEN 'Already exists' END,
       now() - interval '2 days',
       CASE WHEN g % 10 <> 0 THEN now() - (g % 86400) * interval '1 second' END
FROM generate_series(0, $2 - 1) AS g;
ANALYZE jobs;
SQL
  else
    sqlite3 "${url#sqlite:}" >/dev/null <<SQL
PRAGMA busy_timeout = 30000;
WITH RECURSIVE g(n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM g WHERE n + 1 < $2),
now(ms) AS (SELECT CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER))
INSERT INTO jobs (id, client_id, kind, status, eta, links, error_code, error_type, error_message, created_at, finished_at)
SELECT lower(hex(randomblob(4)) || '-' || hex(randomblob(2)) || '-4' || substr(hex(randomblob(2)), 2) || '-'
             || substr('89ab', 1 + (abs(random()) % 4), 1) || substr(hex(randomblob(2)), 2) || '-' || hex(randomblob(6))),
       'mis-bulk-' || (n % 1000), 'create',
       CASE n % 10 WHEN 0 THEN 'PENDING' WHEN 9 THEN 'FAILED' ELSE 'DONE' END,
       ms + 86400000,
       CASE WHEN n % 10 BETWEEN 1 AND 8 THEN '[{"entity":"eHealth/resources","href":"composition/' || n || '"}]' END,
       CASE WHEN n % 10 = 9 THEN 1127 END,
       CASE WHEN n % 10 = 9 THEN 'FINAL_COMPOSITION_FOR_ENCOUNTER_ALREADY_EXISTS' END,
       CASE WHEN n % 10 = 9 THEN 'Already exists' END,
       ms - 172800000,
       CASE WHEN n % 10 <> 0 THEN ms - (n % 86400) * 1000 END
FROM g, now;
SQL
  fi
  echo "  $2 jobs inserted in $((SECONDS - started)) s" >&2
}

# service URL: a fresh service process on URL; sets $service, $address, $admin_address.
service() {
  COMPOSITIONS_POLLING__LIMIT_PER_SECOND=1 COMPOSITIONS_POLLING__LIMIT_BURST=10 \
    start service "$bin/compositions-jobs" serve --listen 127.0.0.1:0 --database "$1"
  service=$pid
}

stop() {
  kill -TERM "$1"
  wait "$1" 2>/dev/null || true
}

# poll_load TARGET CLIENTS JOBS [load options...]: one bench-tool load run, its JSON line.
poll_load() {
  local target=$1 clients=$2 jobs=$3 tokens
  shift 3
  tokens=$("$bin/bench-tool" tokens --key "$key" --client-id mis-load --numbered-clients \
    --count "$clients" --cache-dir "$out/tokens")
  local common=(--tokens "$tokens" --client-prefix mis-load --clients "$clients" --jobs "$jobs"
    --warmup "$warmup" --seconds "$seconds" --long-poll-share 0 --sources 8)
  if [ "$target" = baseline ]; then
    json "$bin/bench-tool" load --baseline --address "$baseline_address" --server-pid "$baseline_pid" "${common[@]}" "$@"
  else
    json "$bin/bench-tool" load --address "$address" --admin "$admin_address" --database "$url" \
      --server-pid "$service" ${postmaster:+--postgres-pid "$postmaster"} "${common[@]}" "$@"
  fi
}

echo "jobs in the store" >&2
record jobs baseline 0 baseline "$(poll_load baseline 500 5000 --finish-rate 20)"
for store in $stores; do
  for size in $job_sizes; do
    echo " $store, $size jobs" >&2
    fresh "$store"
    service "$url"
    bulk "$store" "$size"
    record jobs "$store" "$size" service "$(poll_load service 500 5000 --finish-rate 20)"
    stop "$service"
  done
done

echo "distinct tokens" >&2
for size in $token_sizes; do
  echo " $size tokens" >&2
  record tokens sqlite "$size" baseline "$(poll_load baseline "$size" "$size" --finish-rate 10)"
  fresh sqlite
  service "$url"
  record tokens sqlite "$size" service "$(poll_load service "$size" "$size" --finish-rate 10)"
  stop "$service"
done

echo "connections" >&2
token=$("$bin/bench-tool" tokens --key "$key" --client-id mis-scale)
for size in $waiter_sizes; do
  # Each side holds one descriptor a connection; without CAP_SYS_RESOURCE (a
  # container) the hard limit cannot be raised, and larger sizes are skipped.
  if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt $((size + 1000)) ]; then
    echo " $size connections: skipped, the open-files limit is $(ulimit -n)" >&2
    record skipped sqlite "$size" service "{\"reason\": \"the open-files limit is $(ulimit -n)\"}"
    continue
  fi
  echo " $size idle connections, then $size waiters" >&2
  fresh sqlite
  service "$url"
  record idle sqlite "$size" service "$(json "$bin/bench-tool" connections --address "$address" --server-pid "$service" --connections "$size")"
  stop "$service"
  fresh sqlite
  service "$url"
  "$bin/bench-tool" seed --database "$url" --client-id mis-scale --count $(((size + 9) / 10)) --pending >"$tmp/waited"
  record waiters sqlite "$size" service "$(json "$bin/bench-tool" connections --address "$address" --server-pid "$service" \
    --connections "$size" --jobs "$tmp/waited" --token "$token" --database "$url")"
  stop "$service"
done

commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
python3 "$root/bench/scale.py" "$results" "$commit" "$root/bench/scale.svg" >"$out/scale.md"
cat "$out/scale.md"
