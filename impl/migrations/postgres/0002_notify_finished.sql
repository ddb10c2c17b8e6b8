-- Wake long polls in every instance when any process finishes a job: producers
-- writing plain SQL need do nothing more than the UPDATE. The notification is
-- sent when the transaction commits; its payload is the job's id.
CREATE FUNCTION jobs_notify_finished() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('jobs_finished', NEW.id::text);
    RETURN NULL;
END;
$$;

CREATE TRIGGER jobs_notify_finished
    AFTER UPDATE OF status ON jobs
    FOR EACH ROW
    WHEN (OLD.status = 'PENDING' AND NEW.status <> 'PENDING')
    EXECUTE FUNCTION jobs_notify_finished();
