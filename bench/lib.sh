# Shell functions shared by bench/run.sh and bench/scale.sh (sourced; they use
# the caller's $tmp and children array).

# start NAME COMMAND...: runs a server, waits for its address; sets $address, $pid
# and, for the service, $admin_address (health and metrics).
start() {
  local name=$1
  shift
  "$@" >"$tmp/$name.out" 2>"$tmp/$name.err" &
  pid=$!
  children+=("$pid")
  address=
  for _ in $(seq 100); do
    address=$(sed -n 's/.*address[^0-9]*\([0-9.]*:[0-9]*\).*/\1/p' "$tmp/$name.out" "$tmp/$name.err" | head -1)
    if [ -n "$address" ]; then
      admin_address=$(sed -n 's/.*admin[^0-9]*\([0-9.]*:[0-9]*\).*/\1/p' "$tmp/$name.out" "$tmp/$name.err" | head -1)
      return
    fi
    sleep 0.1
  done
  echo "$name did not start" >&2
  cat "$tmp/$name.err" >&2
  exit 1
}

# as_postgres PROGRAM ARGS...: a PostgreSQL server program, as the postgres user
# when this runs as root (PostgreSQL refuses root).
as_postgres() {
  local program=$1
  shift
  if [ "$(id -u)" = 0 ]; then
    runuser -u postgres -- "$pg_bin/$program" "$@"
  else
    "$pg_bin/$program" "$@"
  fi
}
pg_bin=${BENCH_PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)}

# private_postgres: a PostgreSQL instance of this run alone, on a free port, so
# that its processes' CPU is the service's and the producer's only (the shared
# server on 5432 serves other builds). Sets $private_url and $postmaster_pid.
private_postgres() {
  [ -n "${private_pg:-}" ] && return
  private_pg=$tmp/pg
  mkdir -p "$private_pg"
  if [ "$(id -u)" = 0 ]; then
    chmod o+x "$tmp"
    chown postgres:postgres "$private_pg"
  fi
  local port
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  as_postgres initdb -D "$private_pg/data" -U postgres --auth=trust --no-sync -E UTF8 >/dev/null
  as_postgres pg_ctl -D "$private_pg/data" -l "$private_pg/server.log" -w \
    -o "-p $port -c listen_addresses=127.0.0.1 -k $private_pg -c max_connections=200" start >/dev/null
  postmaster_pid=$(head -1 "$private_pg/data/postmaster.pid")
  private_url=postgres://postgres@127.0.0.1:$port/postgres
}

# service_env: the service as it would run, with real JWT verification against
# the test key set; $key signs the tokens it trusts.
service_env() {
  export COMPOSITIONS_AUTH__JWKS=$root/tests/fixtures/jwks.json COMPOSITIONS_ADMIN_LISTEN=127.0.0.1:0
  export COMPOSITIONS_AUTH__ISSUER=https://auth.bench.ehealth.example
  export COMPOSITIONS_AUTH__AUDIENCE=compositions-jobs
  key=$root/tests/fixtures/rsa-test-key.pem
}
