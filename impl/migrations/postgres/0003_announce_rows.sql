-- Every change a row can have is announced on `jobs_changed`, so that every
-- instance's read cache can keep each job as long as the announcements keep
-- coming, and take new and finished jobs from them instead of reading the row.
--
-- 1. A new or finished job is announced with its row as JSON (times in
-- milliseconds since the epoch): a new job is polled soon, and a finished one
-- again at once (its waiters, then its client's next poll). A finished row too
-- long for a notification (8000 bytes) is announced by its id alone, and the
-- instances read it; new rows too long, and statements that insert more than
-- 100 rows (a bulk load), are not announced: their first poll reads them.
--
-- `jobs_finished` keeps its id-only payload for the instances of the previous
-- release during a rolling upgrade; a later release may drop it.
CREATE FUNCTION jobs_announcement(job jobs) RETURNS text LANGUAGE sql STABLE AS $$
    SELECT json_build_object(
        'id', job.id,
        'client_id', job.client_id,
        'kind', job.kind,
        'status', job.status,
        'eta', floor(extract(epoch FROM job.eta) * 1000)::bigint,
        'links', job.links,
        'error_code', job.error_code,
        'error_type', job.error_type,
        'error_message', job.error_message,
        'dedup_hash', job.dedup_hash,
        'created_at', floor(extract(epoch FROM job.created_at) * 1000)::bigint,
        'finished_at', floor(extract(epoch FROM job.finished_at) * 1000)::bigint
    )::text
$$;

CREATE OR REPLACE FUNCTION jobs_notify_finished() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    announcement text := jobs_announcement(NEW);
BEGIN
    PERFORM pg_notify('jobs_finished', NEW.id::text);
    IF octet_length(announcement) >= 8000 THEN
        announcement := json_build_object('id', NEW.id)::text;
    END IF;
    PERFORM pg_notify('jobs_changed', announcement);
    RETURN NULL;
END;
$$;

CREATE FUNCTION jobs_notify_created() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM created OFFSET 100) THEN
        PERFORM pg_notify('jobs_changed', announcement)
        FROM (SELECT jobs_announcement(created) AS announcement FROM created) AS announced
        WHERE octet_length(announcement) < 8000;
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER jobs_notify_created
    AFTER INSERT ON jobs
    REFERENCING NEW TABLE AS created
    FOR EACH STATEMENT
    EXECUTE FUNCTION jobs_notify_created();

-- 2. Deleted jobs (the purge, or anyone's DELETE) are announced by id, 150 to
-- a notification: `{"deleted": [id, ...]}`.
CREATE FUNCTION jobs_notify_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('jobs_changed', json_build_object('deleted', json_agg(id))::text)
    FROM (SELECT id, (row_number() OVER () - 1) / 150 AS chunk FROM deleted) AS numbered
    GROUP BY chunk;
    RETURN NULL;
END;
$$;

CREATE TRIGGER jobs_notify_deleted
    AFTER DELETE ON jobs
    REFERENCING OLD TABLE AS deleted
    FOR EACH STATEMENT
    EXECUTE FUNCTION jobs_notify_deleted();

-- A TRUNCATE, which fires no DELETE trigger, is announced as `{"truncated": true}`:
-- the instances forget every job.
CREATE FUNCTION jobs_notify_truncated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('jobs_changed', '{"truncated": true}');
    RETURN NULL;
END;
$$;

CREATE TRIGGER jobs_notify_truncated
    AFTER TRUNCATE ON jobs
    FOR EACH STATEMENT
    EXECUTE FUNCTION jobs_notify_truncated();

-- 3. No other change: the only update is a job's one transition, PENDING to
-- DONE or FAILED, so nothing a cache holds can change unannounced.
CREATE FUNCTION jobs_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'job %: the only change a job may have is PENDING to DONE or FAILED', OLD.id
        USING ERRCODE = 'check_violation';
END;
$$;

CREATE TRIGGER jobs_only_transitions
    BEFORE UPDATE ON jobs
    FOR EACH ROW
    WHEN (OLD.status <> 'PENDING' OR NEW.status = 'PENDING' OR NEW.id <> OLD.id
          OR NEW.client_id <> OLD.client_id OR NEW.kind <> OLD.kind OR NEW.eta <> OLD.eta
          OR NEW.created_at <> OLD.created_at OR NEW.dedup_hash IS DISTINCT FROM OLD.dedup_hash)
    EXECUTE FUNCTION jobs_refuse_change();
