-- A status report names its application (application_id). The foreign key checked that for each
-- report as it was inserted: a look-up and a share lock of the application's row per report,
-- about 10 µs of the writer's backend a report (docs/performance.md), the largest single cost of
-- the insert. The writer now checks a batch's applications once, in the batch's transaction,
-- with the same lock (receiver/writer.py: FOR KEY SHARE, so that the application cannot go
-- while the batch is stored); a report naming an application that is not there is refused as
-- before (the writer keeps it whole in the quarantine, endpoint 'writer', error 'unstorable').
-- Deleting an application that reports name is refused, as the foreign key refused it.
ALTER TABLE status_reports DROP CONSTRAINT status_reports_application_id_fkey;

CREATE FUNCTION receiver_application_named_by_reports() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT FROM status_reports WHERE application_id = OLD.id) THEN
        RAISE EXCEPTION 'application % is named by status reports', OLD.id
            USING ERRCODE = 'foreign_key_violation', TABLE = 'status_reports';
    END IF;
    RETURN OLD;
END $$;

CREATE TRIGGER applications_named_by_reports BEFORE DELETE ON applications
    FOR EACH ROW EXECUTE FUNCTION receiver_application_named_by_reports();
