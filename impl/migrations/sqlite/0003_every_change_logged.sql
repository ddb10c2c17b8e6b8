-- Every change a row can have is on the feed, so that the read cache can keep
-- each job as long as the watcher keeps looking.
--
-- 1. Deleted jobs (the purge, or anyone's DELETE) are logged beside the
-- finished ones; the watcher forgets them. `finished_at` is here the time of
-- the deletion, which the log's own purge (an hour) goes by.
CREATE TRIGGER jobs_log_deleted AFTER DELETE ON jobs
BEGIN
    INSERT INTO jobs_finished (id, finished_at)
    VALUES (OLD.id, CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER));
END;

-- 2. No other change: the only update is a job's one transition, PENDING to
-- DONE or FAILED, so nothing the cache holds can change unlogged.
CREATE TRIGGER jobs_only_transitions BEFORE UPDATE ON jobs
    WHEN OLD.status <> 'PENDING' OR NEW.status = 'PENDING' OR NEW.id <> OLD.id
        OR NEW.client_id <> OLD.client_id OR NEW.kind <> OLD.kind OR NEW.eta <> OLD.eta
        OR NEW.created_at <> OLD.created_at OR NEW.dedup_hash IS NOT OLD.dedup_hash
BEGIN
    SELECT RAISE(ABORT, 'the only change a job may have is PENDING to DONE or FAILED');
END;
