-- The jobs table. Times are milliseconds since the Unix epoch (UTC).
-- The CHECKs keep every row in a legal lifecycle state, whoever writes it.
CREATE TABLE jobs (
    id            TEXT    NOT NULL PRIMARY KEY,  -- UUID v4, lowercase, hyphenated
    client_id     TEXT    NOT NULL,              -- the owner; the only reader
    kind          TEXT    NOT NULL CHECK (kind IN ('create', 'sign', 'cancel', 'erln_resend')),
    status        TEXT    NOT NULL CHECK (status IN ('PENDING', 'DONE', 'FAILED')),
    eta           INTEGER NOT NULL,              -- the estimate made at creation
    links         TEXT,                          -- DONE only: JSON [{"entity", "href"}]
    error_code    INTEGER,                       -- FAILED only
    error_type    TEXT,                          -- FAILED only
    error_message TEXT,                          -- FAILED only
    dedup_hash    TEXT,                          -- the producer's request-body hash
    created_at    INTEGER NOT NULL,
    finished_at   INTEGER,                       -- set exactly when DONE or FAILED
    CHECK ((status = 'PENDING') = (finished_at IS NULL)),
    CHECK ((status = 'DONE') = (links IS NOT NULL)),
    CHECK ((status = 'FAILED') = (error_code IS NOT NULL)),
    CHECK ((error_code IS NULL) = (error_type IS NULL)),
    CHECK ((error_code IS NULL) = (error_message IS NULL))
) WITHOUT ROWID;

-- Deduplication: at most one pending job per client and request hash.
CREATE UNIQUE INDEX jobs_pending_dedup ON jobs (client_id, dedup_hash)
    WHERE status = 'PENDING' AND dedup_hash IS NOT NULL;

-- Expiry: finished jobs are found by age.
CREATE INDEX jobs_finished_at ON jobs (finished_at) WHERE finished_at IS NOT NULL;
