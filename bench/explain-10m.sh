#!/usr/bin/env bash
# The query plans of the read path and of a purge batch on 10 million jobs, for the
# figures in docs/scaling.md. Uses a scratch schema of DATABASE_URL and drops it.
#   bench/explain-10m.sh [postgres://postgres@127.0.0.1:5432/test]
set -euo pipefail
url=${1:-${COMPOSITIONS_TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}}
root=$(cd "$(dirname "$0")/.." && pwd)
schema=explain_10m
psql() { command psql --no-psqlrc --quiet --set ON_ERROR_STOP=1 "$url" "$@"; }
trap 'psql -c "DROP SCHEMA IF EXISTS $schema CASCADE"' EXIT

psql -c "DROP SCHEMA IF EXISTS $schema CASCADE" -c "CREATE SCHEMA $schema"
export PGOPTIONS="-c search_path=$schema"
psql -f "$root/impl/migrations/postgres/0001_jobs.sql"

# 10 million jobs of 10,000 clients over 30 days: 5% pending, 80% done, 15% failed.
psql <<'SQL'
SET maintenance_work_mem = '512MB';
INSERT INTO jobs (id, client_id, kind, status, eta, links, error_code, error_type, error_message, created_at, finished_at)
SELECT gen_random_uuid(),
       'mis-' || (n % 10000),
       (ARRAY['create', 'sign', 'cancel', 'erln_resend'])[1 + n % 4],
       s.status,
       t + interval '30 seconds',
       CASE WHEN s.status = 'DONE' THEN jsonb_build_array(jsonb_build_object(
            'entity', 'eHealth/resources', 'href', 'composition/' || gen_random_uuid())) END,
       CASE WHEN s.status = 'FAILED' THEN 1127 END,
       CASE WHEN s.status = 'FAILED' THEN 'FINAL_COMPOSITION_FOR_ENCOUNTER_ALREADY_EXISTS' END,
       CASE WHEN s.status = 'FAILED' THEN 'Final composition for this encounter already exists' END,
       t,
       CASE WHEN s.status <> 'PENDING' THEN t + interval '2 seconds' END
FROM generate_series(1, 10000000) AS n,
     LATERAL (SELECT now() - (n % 2592000) * interval '1 second' AS t) AS time,
     LATERAL (SELECT CASE WHEN n % 20 = 0 THEN 'PENDING' WHEN n % 20 < 4 THEN 'FAILED' ELSE 'DONE' END AS status) AS s;
ANALYZE jobs;
SQL

echo "== the read path (one job of one client), as the service prepares it"
psql <<'SQL'
SELECT id AS probe_id, client_id AS probe_client FROM jobs WHERE status = 'PENDING' OFFSET 123456 LIMIT 1 \gset
PREPARE read_job(uuid, text, timestamptz) AS
  SELECT id, client_id, kind, status, eta, links, error_code, error_type, error_message,
         dedup_hash, created_at, finished_at
  FROM jobs WHERE id = $1 AND client_id = $2 AND (finished_at IS NULL OR finished_at > $3);
EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) EXECUTE read_job(:'probe_id', :'probe_client', now() - interval '7 days');
SQL

echo "== one purge batch (500 jobs finished over 7 days ago)"
psql <<'SQL'
BEGIN;
EXPLAIN (ANALYZE, BUFFERS, COSTS OFF)
  DELETE FROM jobs WHERE id IN (SELECT id FROM jobs WHERE finished_at <= now() - interval '7 days'
                                ORDER BY finished_at LIMIT 500 FOR UPDATE SKIP LOCKED);
ROLLBACK;
SELECT pg_size_pretty(pg_total_relation_size('jobs')) AS jobs_with_indexes;
SQL
