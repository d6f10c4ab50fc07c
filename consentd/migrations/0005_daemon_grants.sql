-- Least privilege. The schema's owner (the role `consentd migrate` logs in as,
-- CONSENTD_MIGRATION_DATABASE_URL) owns every table and runs the migrations;
-- the daemon's role "consentd" owns nothing and may only append to the ledger
-- and read it: UPDATE, DELETE, TRUNCATE and DDL fail for it (tested in
-- tests/e2e/test_least_privilege.py).
--
-- Convention: a migration that creates a table grants role consentd exactly
-- what the daemon needs on it, in the same file (and USAGE on the sequence of
-- a serial column, which INSERT needs for the default). There are no default
-- privileges: a table without its GRANT is unreadable to the daemon, and
-- tests/unit/test_migrations.py fails for it. A daemon logging in under
-- another name gets these rights as a member: GRANT consentd TO that_role.
GRANT SELECT, INSERT ON call_events TO consentd;
GRANT USAGE ON SEQUENCE call_events_id_seq TO consentd;
-- The daemon reads the schema's version at connect (it refuses to run on a
-- schema behind its migrations).
GRANT SELECT ON consentd_migrations TO consentd;
