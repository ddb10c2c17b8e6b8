#!/usr/bin/env bash
# make bench: the service against a bare-hyper baseline, measured in the same run.
#
# Scenarios R, A-D and G-J: wrk (1 thread, 64 connections) after a warm-up, in
# alternating rounds (baseline, service, baseline, ...). Each round records
# throughput, the server's own CPU per request (utime+stime of all its threads,
# from /proc), p50, p99 and the answers by status. E: RSS with 10,000 idle
# keep-alive connections. F: long polls. bench/report.py turns the measurements
# into target/bench/report.md.
#
# G-J are the cold authentication paths: a token the service has never seen on
# every request (G: valid RS256, H: valid EdDSA, I: RS256 with a wrong signature,
# J: garbage). The service remembers each token's outcome, so a token presented
# twice is answered from that cache and costs nothing to verify: each service
# round runs in a fresh process, and no token is presented twice to it (see
# cold() and bench/README.md). V times one verification alone, in-process.
#
# L and LP are a realistic load (bench-tool load) on SQLite and on a private
# PostgreSQL instance: thousands of clients with their own tokens polling tens of
# thousands of jobs at their Retry-After, a share as long polls, while a producer
# in another process finishes and creates jobs; every answer is checked. S: does
# another client's 404 take longer or shorter than an unknown id's?
#
#   BENCH_SECONDS (5) per round, BENCH_ROUNDS (3), BENCH_SCENARIOS ("R A B C D E F
#   V G H I J L LP S"; R is the generated router alone, the floor under A; A also
#   measures AL, with the access log on; C also measures C0, PostgreSQL with the
#   read cache off). The access log is off elsewhere (RUST_LOG without `access`).
#   L and LP: BENCH_LOAD_SECONDS (30) measured after BENCH_LOAD_WARMUP (32: one
#   long-poll hold and one Retry-After), BENCH_LOAD_ROUNDS (1), BENCH_LOAD_CLIENTS
#   (2000), BENCH_LOAD_JOBS (20000), BENCH_LOAD_FINISH_RATE (50 a second),
#   BENCH_LOAD_LONG_SHARE (0.2). S: BENCH_SIDE_PAIRS (2000).
#   BENCH_COLD_RATE (45000) and BENCH_COLD_GARBAGE_RATE (90000): the highest
#   request rates G-I and J are expected to reach; they size the token files
#   (rate x (2 s warm-up + BENCH_SECONDS)), kept in target/bench/tokens for a day.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
seconds=${BENCH_SECONDS:-5}
rounds=${BENCH_ROUNDS:-3}
scenarios=${BENCH_SCENARIOS:-R A B C D E F V G H I J L LP S}
load_seconds=${BENCH_LOAD_SECONDS:-30}
load_warmup=${BENCH_LOAD_WARMUP:-32}
load_rounds=${BENCH_LOAD_ROUNDS:-1}
load_clients=${BENCH_LOAD_CLIENTS:-2000}
load_jobs=${BENCH_LOAD_JOBS:-20000}
load_rate=${BENCH_LOAD_FINISH_RATE:-50}
load_long=${BENCH_LOAD_LONG_SHARE:-0.2}
side_pairs=${BENCH_SIDE_PAIRS:-2000}
failed=()
cold_rate=${BENCH_COLD_RATE:-45000}
garbage_rate=${BENCH_COLD_GARBAGE_RATE:-90000}
postgres=${BENCH_DATABASE_URL:-${COMPOSITIONS_TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}}
out=$root/target/bench
bin=${CARGO_TARGET_DIR:-$root/target}/release
results=$out/results.jsonl

"$root/scripts/prerequisites.sh" bench
# 10,000 connections on each side, and some: raise the soft limit to the hard one.
ulimit -n "$(ulimit -Hn)"
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt 10500 ]; then
  echo "scenarios E and F need 10,500 open files per process; the limit is $(ulimit -n)" >&2
  exit 1
fi
cargo build --quiet --release -p compositions-jobs -p compositions-bench

mkdir -p "$out"
: >"$results"
tmp=$(mktemp -d)
children=()
schema=
cleanup() {
  for pid in "${children[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  [ -n "${private_pg:-}" ] && as_postgres pg_ctl -D "$private_pg/data" -m immediate -w stop >/dev/null 2>&1
  [ -n "$schema" ] && psql -q "$postgres" -c "DROP SCHEMA IF EXISTS $schema CASCADE" >/dev/null 2>&1
  rm -rf "$tmp"
}
trap cleanup EXIT
# start, as_postgres, private_postgres, service_env (shared with scale.sh).
source "$root/bench/lib.sh"

# The service as it would run (service_env). The polling limit stays on the
# request path but never throttles (64 connections hammer one job on purpose).
service_env
export COMPOSITIONS_POLLING__LIMIT_PER_SECOND=1000000000 COMPOSITIONS_POLLING__LIMIT_BURST=1000000000
export RUST_LOG=warn,compositions_jobs=info BENCH_LUA=$root/bench/lua
ed_key=$root/tests/fixtures/ed25519-test-key.pem
client=mis-bench

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
postgres_ticks() {
  local total=0 pid
  for pid in $(pgrep -u postgres); do
    total=$((total + $(awk '{print $14 + $15}' "/proc/$pid/stat" 2>/dev/null || echo 0)))
  done
  echo "$total"
}
peak_rss_kib() { awk '/VmHWM/ {print $2}' "/proc/$1/status"; }
rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }

# token_cache ADMIN_ADDRESS: "HITS MISSES", the service's token cache counters
# (tokens answered from its cache, tokens verified) from its /metrics.
token_cache() {
  local metrics
  exec 3<>"/dev/tcp/${1%:*}/${1##*:}"
  printf 'GET /metrics HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n' "$1" >&3
  metrics=$(cat <&3)
  exec 3<&-
  awk '$1 == "compositions_jobs_token_cache_hits_total" {hits = $2}
       $1 == "compositions_jobs_token_cache_misses_total" {misses = $2}
       END {print hits + 0, misses + 0}' <<<"$metrics"
}

# round SCENARIO TARGET PID ADDRESS SCRIPT [ADMIN_ADDRESS [JSON]]: one wrk run, one
# JSON line. With the service's admin address, the line also says how many tokens
# its cache answered and how many it verified during the run; JSON: more fields.
round() {
  local scenario=$1 target=$2 server=$3 at=$4 script=$5 admin=${6:-} fields=${7:-}
  local before pg_before after pg_after line hits_before misses_before hits misses
  [ -n "$admin" ] && read -r hits_before misses_before < <(token_cache "$admin")
  before=$(cpu_ticks "$server")
  pg_before=$(postgres_ticks)
  line=$(wrk -t1 -c64 -d"${seconds}s" --timeout 10s -s "$root/bench/lua/$script" "http://$at" | tail -1)
  after=$(cpu_ticks "$server")
  pg_after=$(postgres_ticks)
  if [ -n "$admin" ]; then
    read -r hits misses < <(token_cache "$admin")
    fields+="${fields:+, }\"token_cache_hits\": $((hits - hits_before)), \"token_cache_misses\": $((misses - misses_before))"
  fi
  echo "{\"scenario\": \"$scenario\", \"target\": \"$target\", \"cpu_ticks\": $((after - before)), \"postgres_ticks\": $((pg_after - pg_before)), \"clk_tck\": $(getconf CLK_TCK), \"peak_rss_kib\": $(peak_rss_kib "$server"), ${fields:+$fields, }\"wrk\": $line}" >>"$results"
}

# compare SCENARIO SERVICE_PID SERVICE_ADDRESS SCRIPT: warm-up, then alternating rounds.
compare() {
  local scenario=$1 service=$2 at=$3 script=$4
  echo "scenario $scenario" >&2
  wrk -t1 -c64 -d2s -s "$root/bench/lua/$script" "http://$at" >/dev/null
  wrk -t1 -c64 -d2s -s "$root/bench/lua/$script" "http://$baseline_address" >/dev/null
  for _ in $(seq "$rounds"); do
    round "$scenario" baseline "$baseline_pid" "$baseline_address" "$script"
    round "$scenario" service "$service" "$at" "$script"
  done
}

# cold SCENARIO EXPECTED_STATUS RATE TOKENS_OPTIONS...: scenarios G-J, one job on
# SQLite as in A, and on every request a token the service process has never
# seen, made by `bench-tool tokens TOKENS_OPTIONS...`.
#
# The token file holds RATE x (2 + BENCH_SECONDS) distinct tokens: the first
# RATE x 2 for the warm-up, the rest for the measured round. Each service round
# starts a fresh process (empty token caches), warms it up with the first slice
# in one wrk run, then measures a second wrk run with the second slice; the Lua
# script hands out each token once. So no token reaches the same process twice,
# and the warm-up's tokens are not the round's. A separate warm-up run, rather
# than one long run measured at its tail, because CPU is read around whole wrk
# runs. The warm-up also fills the token cache (10,000 entries), so the round
# measures the steady state of many sessions: a full cache, each new token
# evicting another. Every round of the scenario reuses the same two slices,
# each time against a new process. Should a run outlast its slice, the script
# counts the tokens it hands out again ("reused"), and the service's own cache
# counters say whether any token was answered from its cache: report.py calls
# the scenario invalid if either is not zero. The baseline ignores tokens; it
# runs the same script and slices for the same request sizes and wrk costs.
cold() {
  local scenario=$1 expected=$2 rate=$3
  shift 3
  local warm=$((rate * 2)) take=$((rate * seconds)) tokens service warm_line warm_reused
  echo "scenario $scenario" >&2
  tokens=$("$bin/bench-tool" tokens --client-id "$client" --count $((warm + take)) --cache-dir "$out/tokens" "$@")
  sqlite_service
  BENCH_PATH=/api/patients/composition/job/$("$bin/bench-tool" seed --database "$sqlite_url" --client-id "$client" --pending)
  kill -TERM "$pid"
  wait "$pid" || true
  export BENCH_PATH BENCH_TOKENS=$tokens BENCH_EXPECT=$expected
  BENCH_TOKENS_SKIP=0 BENCH_TOKENS_TAKE=$warm wrk -t1 -c64 -d2s -s "$root/bench/lua/cold_tokens.lua" "http://$baseline_address" >/dev/null
  for _ in $(seq "$rounds"); do
    BENCH_TOKENS_SKIP=$warm BENCH_TOKENS_TAKE=$take round "$scenario" baseline "$baseline_pid" "$baseline_address" cold_tokens.lua
    start service "$bin/compositions-jobs" serve --listen 127.0.0.1:0 --database "$sqlite_url"
    service=$pid
    warm_line=$(BENCH_TOKENS_SKIP=0 BENCH_TOKENS_TAKE=$warm wrk -t1 -c64 -d2s -s "$root/bench/lua/cold_tokens.lua" "http://$address" | tail -1)
    warm_reused=$(sed -n 's/.*"reused": \([0-9]*\).*/\1/p' <<<"$warm_line")
    BENCH_TOKENS_SKIP=$warm BENCH_TOKENS_TAKE=$take round "$scenario" service "$service" "$address" cold_tokens.lua \
      "$admin_address" "\"tokens\": $take, \"warmup_tokens\": $warm, \"warmup_reused\": ${warm_reused:-0}"
    kill -TERM "$service"
    wait "$service" || true
  done
}

start baseline "$bin/baseline"
baseline_pid=$pid baseline_address=$address

"$bin/bench-tool" tokens --key "$key" --client-id "$client" >"$tmp/token"
export BENCH_TOKEN
BENCH_TOKEN=$(cat "$tmp/token")

# hold ADDRESS PID NAME: 10,000 idle keep-alive connections to ADDRESS, one request
# each; records PID's RSS while they are open in $tmp/rss.NAME.
hold() {
  "$bin/bench-tool" idle --address "$1" --connections 10000 --hold-seconds 4 >"$tmp/idle.$3" &
  local idler=$!
  for _ in $(seq 600); do grep -q open= "$tmp/idle.$3" 2>/dev/null && break; sleep 0.1; done
  sleep 1
  rss_kib "$2" >"$tmp/rss.$3"
  wait "$idler"
}

sqlite_service() {
  rm -rf "$tmp/sqlite" && mkdir -p "$tmp/sqlite"
  sqlite_url=sqlite:$tmp/sqlite/jobs.db
  start service "$bin/compositions-jobs" serve --listen 127.0.0.1:0 --database "$sqlite_url"
}

# load SCENARIO DATABASE_URL [POSTMASTER_PID]: scenario L (or LP): bench-tool load
# against bare hyper, then against a fresh service on DATABASE_URL (its default
# polling limit on: polling at Retry-After never meets it), in alternating rounds.
load() {
  local scenario=$1 url=$2 postmaster=${3:-} tokens line rc service
  echo "scenario $scenario" >&2
  tokens=$("$bin/bench-tool" tokens --key "$key" --client-id mis-load --numbered-clients \
    --count "$load_clients" --cache-dir "$out/tokens")
  local common=(--tokens "$tokens" --client-prefix mis-load --clients "$load_clients" --jobs "$load_jobs"
    --finish-rate "$load_rate" --long-poll-share "$load_long" --warmup "$load_warmup" --seconds "$load_seconds")
  for _ in $(seq "$load_rounds"); do
    # Each round starts from an empty store.
    if [ -n "$postmaster" ]; then
      psql -q "$private_url" -c "DROP SCHEMA IF EXISTS load CASCADE; CREATE SCHEMA load" >/dev/null
    else
      rm -f "${url#sqlite:}" "${url#sqlite:}"-*
    fi
    line=$("$bin/bench-tool" load --baseline --address "$baseline_address" --server-pid "$baseline_pid" "${common[@]}")
    echo "{\"scenario\": \"$scenario\", \"target\": \"baseline\", \"clk_tck\": $(getconf CLK_TCK), \"result\": $line}" >>"$results"
    COMPOSITIONS_POLLING__LIMIT_PER_SECOND=1 COMPOSITIONS_POLLING__LIMIT_BURST=10 \
      start service "$bin/compositions-jobs" serve --listen 127.0.0.1:0 --database "$url"
    service=$pid
    rc=0
    line=$("$bin/bench-tool" load --address "$address" --admin "$admin_address" --database "$url" \
      --server-pid "$service" ${postmaster:+--postgres-pid "$postmaster"} "${common[@]}") || rc=$?
    [ "$rc" = 0 ] || failed+=("$scenario")
    echo "{\"scenario\": \"$scenario\", \"target\": \"service\", \"clk_tck\": $(getconf CLK_TCK), \"exit\": $rc, \"result\": ${line:-null}}" >>"$results"
    kill -TERM "$service"
    wait "$service" || true
  done
}

for scenario in $scenarios; do
  case $scenario in
    R)
      # The generated router alone: no auth, no store, a constant answer.
      start floor "$bin/router-floor"
      BENCH_PATH=/api/patients/composition/job/89678f60-4cdc-4fe3-ae83-e8b3ebd35c59 compare R "$pid" "$address" one_token.lua
      kill -TERM "$pid"
      ;;
    A | B)
      sqlite_service
      BENCH_PATH=/api/patients/composition/job/$("$bin/bench-tool" seed --database "$sqlite_url" --client-id "$client" --pending)
      export BENCH_PATH
      if [ "$scenario" = A ]; then
        compare A "$pid" "$address" one_token.lua
        kill -TERM "$pid"
        # The same with the access log on: one JSON line per request.
        RUST_LOG=warn,compositions_jobs=info,access=info start service "$bin/compositions-jobs" serve --listen 127.0.0.1:0 --database "$sqlite_url"
        compare AL "$pid" "$address" one_token.lua
      else
        "$bin/bench-tool" tokens --key "$key" --client-id "$client" --count 1000 >"$tmp/tokens"
        BENCH_TOKENS=$tmp/tokens compare B "$pid" "$address" rotating_tokens.lua
      fi
      kill -TERM "$pid"
      ;;
    C)
      schema=bench_$$
      psql -q "$postgres" -c "CREATE SCHEMA $schema" >/dev/null
      separator='?'
      [[ $postgres == *\?* ]] && separator='&'
      pg_url="$postgres${separator}options=-csearch_path%3D$schema"
      start service "$bin/compositions-jobs" serve --listen 127.0.0.1:0 --database "$pg_url"
      BENCH_PATH=/api/patients/composition/job/$("$bin/bench-tool" seed --database "$pg_url" --client-id "$client" --pending)
      export BENCH_PATH
      compare C "$pid" "$address" one_token.lua
      kill -TERM "$pid"
      # The same without the read cache: what each poll costs PostgreSQL.
      COMPOSITIONS_JOBS__READ_CACHE_ENTRIES=0 start service "$bin/compositions-jobs" serve --listen 127.0.0.1:0 --database "$pg_url"
      compare C0 "$pid" "$address" one_token.lua
      kill -TERM "$pid"
      ;;
    D)
      sqlite_service
      "$bin/bench-tool" seed --database "$sqlite_url" --client-id "$client" --count 10000 >"$tmp/ids"
      "$bin/bench-tool" tokens --key "$key" --client-id "$client" --count 10 --bad-signature >"$tmp/bad"
      BENCH_IDS=$tmp/ids BENCH_BAD_TOKENS=$tmp/bad compare D "$pid" "$address" mix.lua
      kill -TERM "$pid"
      ;;
    E)
      echo "scenario E" >&2
      sqlite_service
      idle_before=$(rss_kib "$pid")
      hold "$address" "$pid" service
      kill -TERM "$pid"
      hold "$baseline_address" "$baseline_pid" baseline
      echo "{\"scenario\": \"E\", \"connections\": $(sed -n 's/open=//p' "$tmp/idle.service"), \"rss_before_kib\": $idle_before, \"rss_kib\": $(cat "$tmp/rss.service"), \"baseline_rss_kib\": $(cat "$tmp/rss.baseline")}" >>"$results"
      ;;
    F)
      echo "scenario F" >&2
      # Another process finishes the jobs: SQLite (data_version), then PostgreSQL
      # (NOTIFY); then this process (the bench tool runs the server itself).
      sqlite_service
      "$bin/bench-tool" seed --database "$sqlite_url" --client-id "$client" --count 1000 --pending >"$tmp/waited"
      line=$("$bin/bench-tool" longpoll --address "$address" --database "$sqlite_url" --jobs "$tmp/waited" \
        --token "$BENCH_TOKEN" --server-pid "$pid")
      echo "{\"scenario\": \"F\", \"case\": \"SQLite, finished by another process\", \"result\": \"$line\"}" >>"$results"
      kill -TERM "$pid"
      if [ -z "$schema" ]; then
        schema=bench_$$
        psql -q "$postgres" -c "CREATE SCHEMA $schema" >/dev/null
        separator='?'
        [[ $postgres == *\?* ]] && separator='&'
        pg_url="$postgres${separator}options=-csearch_path%3D$schema"
      fi
      start service "$bin/compositions-jobs" serve --listen 127.0.0.1:0 --database "$pg_url"
      "$bin/bench-tool" seed --database "$pg_url" --client-id "$client" --count 1000 --pending >"$tmp/waited"
      line=$("$bin/bench-tool" longpoll --address "$address" --database "$pg_url" --jobs "$tmp/waited" \
        --token "$BENCH_TOKEN" --server-pid "$pid")
      echo "{\"scenario\": \"F\", \"case\": \"PostgreSQL, finished by another process (NOTIFY)\", \"result\": \"$line\"}" >>"$results"
      kill -TERM "$pid"
      rm -rf "$tmp/inproc" && mkdir -p "$tmp/inproc"
      "$bin/bench-tool" seed --database "sqlite:$tmp/inproc/jobs.db" --client-id "$client" --count 1000 --pending >"$tmp/waited"
      line=$("$bin/bench-tool" longpoll --database "sqlite:$tmp/inproc/jobs.db" --jobs "$tmp/waited" \
        --token "$BENCH_TOKEN" --jwks "$COMPOSITIONS_AUTH__JWKS")
      echo "{\"scenario\": \"F\", \"case\": \"SQLite, finished in the server's process\", \"result\": \"$line\"}" >>"$results"
      ;;
    V)
      # What G and H cannot avoid: one signature check, and the whole verifier.
      echo "scenario V" >&2
      echo "{\"scenario\": \"V\", \"result\": $("$bin/bench-tool" verify-cost --fixtures "$root/tests/fixtures")}" >>"$results"
      ;;
    G) cold G 200 "$cold_rate" --key "$key" --alg rs256 ;;
    H) cold H 200 "$cold_rate" --key "$ed_key" --alg eddsa ;;
    I) cold I 401 "$cold_rate" --key "$key" --alg rs256 --bad-signature ;;
    J) cold J 401 "$garbage_rate" --garbage ;;
    L)
      mkdir -p "$tmp/load"
      load L "sqlite:$tmp/load/jobs.db"
      ;;
    LP)
      private_postgres
      load LP "$private_url?options=-csearch_path%3Dload" "$postmaster_pid"
      ;;
    S)
      # The owner polls its job (so the read cache holds it); another client asks
      # for it and for an unknown id, in pairs.
      echo "scenario S" >&2
      sqlite_service
      job=$("$bin/bench-tool" seed --database "$sqlite_url" --client-id "$client" --pending)
      other=$("$bin/bench-tool" tokens --key "$key" --client-id mis-other)
      rc=0
      line=$("$bin/bench-tool" side-channel --address "$address" --job "$job" --owner-token "$BENCH_TOKEN" \
        --other-token "$other" --pairs "$side_pairs") || rc=$?
      [ "$rc" = 0 ] || failed+=(S)
      echo "{\"scenario\": \"S\", \"exit\": $rc, \"result\": ${line:-null}}" >>"$results"
      kill -TERM "$pid"
      ;;
    *)
      echo "unknown scenario $scenario" >&2
      exit 2
      ;;
  esac
done

commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
python3 "$root/bench/report.py" "$results" "$commit" "$seconds" "$rounds" >"$out/report.md"
cat "$out/report.md"
if [ "${#failed[@]}" -gt 0 ]; then
  echo "wrong answers in scenario(s) ${failed[*]}: see above and $out/report.md" >&2
  exit 1
fi
