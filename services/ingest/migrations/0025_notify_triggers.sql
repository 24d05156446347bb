-- NOTIFY comes from the tables that change, not from each statement that changes them:
-- every statement that appends events wakes the watchers of those requests (once per
-- request), and every statement that queues outbox rows wakes the workers of that kind.
-- Notifications are sent at commit, so a listener never reads before the rows are there.
CREATE FUNCTION notify_events_appended() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('imgpipe_events', request_id::text)
    FROM (SELECT DISTINCT request_id FROM appended) d;
    RETURN NULL;
END $$;

CREATE TRIGGER events_notify AFTER INSERT ON events
    REFERENCING NEW TABLE AS appended
    FOR EACH STATEMENT EXECUTE FUNCTION notify_events_appended();

CREATE FUNCTION notify_outbox_queued() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('imgpipe_outbox', kind) FROM (SELECT DISTINCT kind FROM queued) k;
    RETURN NULL;
END $$;

CREATE TRIGGER outbox_notify AFTER INSERT ON outbox
    REFERENCING NEW TABLE AS queued
    FOR EACH STATEMENT EXECUTE FUNCTION notify_outbox_queued();
