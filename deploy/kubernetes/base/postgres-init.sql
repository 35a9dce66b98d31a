-- fer-search's database roles, each with the least rights its component needs; none is a
-- superuser, none may create roles or databases. Run by the postgres image on an empty data
-- volume (/docker-entrypoint-initdb.d, psql as the superuser, ON_ERROR_STOP), by compose and by
-- Kubernetes alike. Safe to run again by hand on an existing cluster (it creates what is
-- missing and sets the passwords), e.g. after an upgrade from the single-superuser layout:
--
--   docker compose exec postgres psql -U postgres -d optuna -f /docker-entrypoint-initdb.d/10-roles.sql
--   kubectl exec statefulset/postgres -- psql -U postgres -d optuna -f /docker-entrypoint-initdb.d/10-roles.sql
--
-- | role          | what it may do                                                            |
-- |---------------|---------------------------------------------------------------------------|
-- | fer_worker    | owns the database optuna: Optuna's tables, the grid queue, advisory locks |
-- |               | (workers, through PgBouncer, and the promote Job)                         |
-- | fer_mlflow    | owns mlflow (tracking, registry) and mlflow_auth (MLflow's users)         |
-- | fer_dashboard | CONNECT to optuna and SELECT on its tables, nothing else (optuna-dashboard)|
--
-- Passwords are read from files (never from this script or an environment variable): the
-- folder $FER_SECRETS_DIR (default /run/secrets) holds worker-db-password, mlflow-db-password
-- and dashboard-db-password. A password that is empty, shorter than 12 characters or still the
-- example's change-me stops the script (and the first start of PostgreSQL) with one line.

\set ON_ERROR_STOP on
\set worker_password `cat "${FER_SECRETS_DIR:-/run/secrets}/worker-db-password"`
\set mlflow_password `cat "${FER_SECRETS_DIR:-/run/secrets}/mlflow-db-password"`
\set dashboard_password `cat "${FER_SECRETS_DIR:-/run/secrets}/dashboard-db-password"`
\set optuna_db `echo "${POSTGRES_DB:-optuna}"`

SELECT (length(:'worker_password') < 12 OR :'worker_password' LIKE 'change-me%')
    OR (length(:'mlflow_password') < 12 OR :'mlflow_password' LIKE 'change-me%')
    OR (length(:'dashboard_password') < 12 OR :'dashboard_password' LIKE 'change-me%')
    AS weak_password \gset
\if :weak_password
DO $$ BEGIN RAISE EXCEPTION 'fer-search: a database password (worker-db-password, mlflow-db-password or dashboard-db-password) is empty, shorter than 12 characters or still change-me; set your own'; END $$;
\endif

-- Roles: created when missing, then (re)set, so that a second run rotates the passwords.
SELECT format('CREATE ROLE %I', name) FROM unnest(ARRAY['fer_worker', 'fer_mlflow', 'fer_dashboard']) AS name
 WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = name) \gexec
ALTER ROLE fer_worker LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS INHERIT PASSWORD :'worker_password';
ALTER ROLE fer_mlflow LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS INHERIT PASSWORD :'mlflow_password';
ALTER ROLE fer_dashboard LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS INHERIT PASSWORD :'dashboard_password';
-- A mistake in one component's settings cannot open many connections.
ALTER ROLE fer_dashboard CONNECTION LIMIT 10;

-- Databases: optuna (made by the image from POSTGRES_DB) and MLflow's two.
SELECT format('CREATE DATABASE %I', :'optuna_db') WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'optuna_db') \gexec
SELECT 'CREATE DATABASE mlflow' WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'mlflow') \gexec
SELECT 'CREATE DATABASE mlflow_auth' WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'mlflow_auth') \gexec
SELECT format('ALTER DATABASE %I OWNER TO fer_worker', :'optuna_db') \gexec
ALTER DATABASE mlflow OWNER TO fer_mlflow;
ALTER DATABASE mlflow_auth OWNER TO fer_mlflow;
-- Nobody connects to a database but the roles named here (and the superuser).
SELECT format('REVOKE ALL ON DATABASE %I FROM PUBLIC', :'optuna_db') \gexec
REVOKE ALL ON DATABASE mlflow FROM PUBLIC;
REVOKE ALL ON DATABASE mlflow_auth FROM PUBLIC;
REVOKE ALL ON DATABASE postgres FROM PUBLIC;
SELECT format('GRANT CONNECT, TEMPORARY ON DATABASE %I TO fer_worker', :'optuna_db') \gexec
SELECT format('GRANT CONNECT ON DATABASE %I TO fer_dashboard', :'optuna_db') \gexec

-- Inside optuna: the public schema belongs to its owner (PostgreSQL 15: pg_database_owner), so
-- fer_worker creates Optuna's tables; the dashboard reads them, those made later too.
\connect :optuna_db
REVOKE ALL ON SCHEMA public FROM PUBLIC;
GRANT USAGE, CREATE ON SCHEMA public TO fer_worker;
GRANT USAGE ON SCHEMA public TO fer_dashboard;
GRANT SELECT ON ALL TABLES IN SCHEMA public TO fer_dashboard;
ALTER DEFAULT PRIVILEGES FOR ROLE fer_worker IN SCHEMA public GRANT SELECT ON TABLES TO fer_dashboard;
-- Tables the superuser made before these roles existed (an upgrade): hand them to fer_worker.
SELECT format('ALTER TABLE public.%I OWNER TO fer_worker', tablename) FROM pg_tables
 WHERE schemaname = 'public' AND tableowner <> 'fer_worker' \gexec
SELECT format('ALTER SEQUENCE public.%I OWNER TO fer_worker', sequencename) FROM pg_sequences
 WHERE schemaname = 'public' AND sequenceowner <> 'fer_worker' \gexec

\connect mlflow
REVOKE ALL ON SCHEMA public FROM PUBLIC;
GRANT USAGE, CREATE ON SCHEMA public TO fer_mlflow;
SELECT format('ALTER TABLE public.%I OWNER TO fer_mlflow', tablename) FROM pg_tables
 WHERE schemaname = 'public' AND tableowner <> 'fer_mlflow' \gexec
SELECT format('ALTER SEQUENCE public.%I OWNER TO fer_mlflow', sequencename) FROM pg_sequences
 WHERE schemaname = 'public' AND sequenceowner <> 'fer_mlflow' \gexec

\connect mlflow_auth
REVOKE ALL ON SCHEMA public FROM PUBLIC;
GRANT USAGE, CREATE ON SCHEMA public TO fer_mlflow;
