-- What finished, in order, for every process sharing the file. A server's
-- change watcher reads the rows after the last it saw whenever another
-- connection has committed, and forgets from its read cache, and wakes the long
-- polls of, exactly those jobs: a busy producer creating jobs no longer makes
-- every cached PENDING job a miss. A server deletes rows an hour old.
CREATE TABLE jobs_finished (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused
    id          TEXT    NOT NULL,
    finished_at INTEGER NOT NULL
);

CREATE INDEX jobs_finished_log_at ON jobs_finished (finished_at);

CREATE TRIGGER jobs_log_finished AFTER UPDATE OF status ON jobs
    WHEN OLD.status = 'PENDING' AND NEW.status <> 'PENDING'
BEGIN
    INSERT INTO jobs_finished (id, finished_at) VALUES (NEW.id, NEW.finished_at);
END;
