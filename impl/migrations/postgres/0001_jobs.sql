-- The jobs table: the integration contract for every producer (see ../README.md).
-- The CHECKs keep every row in a legal lifecycle state, whoever writes it.
CREATE TABLE jobs (
    id            uuid        NOT NULL PRIMARY KEY,
    client_id     text        NOT NULL,              -- the owner; the only reader
    kind          text        NOT NULL CHECK (kind IN ('create', 'sign', 'cancel', 'erln_resend')),
    status        text        NOT NULL CHECK (status IN ('PENDING', 'DONE', 'FAILED')),
    eta           timestamptz NOT NULL,              -- the estimate made at creation
    links         jsonb,                             -- DONE only: [{"entity", "href"}]
    error_code    integer,                           -- FAILED only
    error_type    text,                              -- FAILED only
    error_message text,                              -- FAILED only
    dedup_hash    text,                              -- the producer's request-body hash
    created_at    timestamptz NOT NULL,
    finished_at   timestamptz,                       -- set exactly when DONE or FAILED
    CHECK ((status = 'PENDING') = (finished_at IS NULL)),
    CHECK ((status = 'DONE') = (links IS NOT NULL)),
    CHECK (links IS NULL OR jsonb_typeof(links) = 'array'),
    CHECK ((status = 'FAILED') = (error_code IS NOT NULL)),
    CHECK ((error_code IS NULL) = (error_type IS NULL)),
    CHECK ((error_code IS NULL) = (error_message IS NULL))
);

-- Deduplication: at most one pending job per client and request hash.
CREATE UNIQUE INDEX jobs_pending_dedup ON jobs (client_id, dedup_hash)
    WHERE status = 'PENDING' AND dedup_hash IS NOT NULL;

-- Expiry: finished jobs are found by age.
CREATE INDEX jobs_finished_at ON jobs (finished_at) WHERE finished_at IS NOT NULL;
