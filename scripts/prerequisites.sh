#!/usr/bin/env bash
# The system tools a suite needs, checked before it runs: `make test` and
# `.ci/run` call this with `test`, `make bench` with `bench`.
#
# Each tool is looked for where the suites look for it. What is missing is
# installed from Debian's packages when this runs as root; otherwise, or when the
# install does not give a usable tool, it stops with one line naming the
# packages. Nothing is fetched from outside the package registries: the Python
# tools come from PyPI (.venv), the Node tools from npm (docs/node_modules) and
# cargo-deny from crates.io (.tools), each by the Makefile.
#
#   scripts/prerequisites.sh test|bench
set -euo pipefail
suite=${1:?usage: scripts/prerequisites.sh test|bench}

# The browser docs/browser-test.mjs starts, and the PostgreSQL server that the
# PostgreSQL half of the tests uses (empty: that half is skipped).
chromium=${CHROMIUM:-/usr/bin/chromium}
database=${COMPOSITIONS_TEST_DATABASE_URL-postgres://postgres@127.0.0.1:5432/test}

# version_at_least HAVE WANT: dotted versions, compared field by field.
version_at_least() {
  [ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -n 1)" = "$2" ]
}

# A PostgreSQL server program, on PATH or where Debian keeps it (as
# tests/support/postgres.rs looks for it).
pg_server_program() {
  command -v "$1" >/dev/null 2>&1 && return 0
  compgen -G "/usr/lib/postgresql/*/bin/$1" >/dev/null
}

java_ok() {
  command -v java >/dev/null 2>&1 || return 1
  local version
  version=$(java -version 2>&1 | sed -n 's/.*version "\([0-9][0-9.]*\).*/\1/p' | head -n 1)
  version_at_least "${version:-0}" 17
}

# Redocly's CLI needs Node.js 20.19 or newer.
node_ok() {
  command -v node >/dev/null 2>&1 || return 1
  version_at_least "$(node --version | tr -d v)" 20.19
}

# npm comes with NodeSource's nodejs and apart from Debian's, which conflict:
# it is asked for only once Node.js is there.
npm_ok() {
  ! command -v node >/dev/null 2>&1 || command -v npm >/dev/null 2>&1
}

pg_server_ok() {
  pg_server_program initdb && pg_server_program pg_ctl
}

# check NAME PACKAGE TEST...: records NAME (Debian package PACKAGE) as missing
# unless the command TEST... succeeds.
missing=() packages=()
check() {
  local name=$1 package=$2
  shift 2
  if ! "$@" >/dev/null 2>&1; then
    missing+=("$name")
    packages+=("$package")
  fi
}

run_checks() {
  missing=() packages=()
  check "a C compiler (cc)" gcc command -v cc
  case $suite in
    test)
      check "Java 17 or newer" openjdk-17-jre-headless java_ok
      check "Python 3 with venv" python3-venv python3 -c 'import venv, ensurepip'
      check "Node.js 20.19 or newer" nodejs node_ok
      check "npm" npm npm_ok
      check "Chromium ($chromium)" chromium test -x "$chromium"
      check "the PostgreSQL client (pg_isready)" postgresql-client command -v pg_isready
      check "the PostgreSQL server programs (initdb, pg_ctl)" postgresql pg_server_ok
      ;;
    bench)
      check "wrk" wrk command -v wrk
      check "the PostgreSQL client (psql)" postgresql-client command -v psql
      ;;
    *)
      echo "usage: scripts/prerequisites.sh test|bench" >&2
      exit 2
      ;;
  esac
}

# Two rounds at most: npm is only asked for once Node.js is installed.
run_checks
for _ in 1 2; do
  [ ${#missing[@]} -gt 0 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 || break
  echo "installing from Debian's packages: ${packages[*]}" >&2
  [ -n "${updated:-}" ] || apt-get update -qq || true
  updated=1
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${packages[@]}" >/dev/null ||
    echo "apt-get could not install ${packages[*]}" >&2
  run_checks
done
if [ ${#missing[@]} -gt 0 ]; then
  hint="as root, run: apt-get install ${packages[*]}"
  # A browser path of one's own is not what the package installs.
  if [ -n "${CHROMIUM:-}" ] && [[ " ${packages[*]} " == *" chromium "* ]]; then
    hint="$hint (or point CHROMIUM at a Chromium; it is $CHROMIUM)"
  fi
  echo "make $suite needs $(IFS=,; echo "${missing[*]}" | sed 's/,/, /g'): $hint" >&2
  exit 1
fi

# Not a program but a server: the PostgreSQL half of the tests is never skipped
# by accident.
if [ "$suite" = test ] && [ -n "$database" ] && ! pg_isready --quiet --dbname "$database"; then
  echo "make test needs PostgreSQL at $database: start it, point COMPOSITIONS_TEST_DATABASE_URL at one, or set it empty to skip the PostgreSQL tests" >&2
  exit 1
fi
