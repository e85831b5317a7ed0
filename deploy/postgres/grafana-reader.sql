-- The read-only PostgreSQL role Grafana's "symbiont" data source signs in as.
--
--   psql -v ON_ERROR_STOP=1 -v reader=symbiont_grafana -v reader_password=SECRET -f grafana-reader.sql
--
-- Run by the grafana-setup service of docker-compose.yml after every migration; safe to run
-- again (it sets the password again and grants what is missing).  The role may read what
-- dashboards show: the network, readings, windows, reconciliations, alerts, incidents, ingest
-- counts and the engine's and outbox's backlog.  It may not read API tokens, prices, webhook
-- targets, message payloads, delivery errors (they can quote a target) or statement documents.
-- Its transactions are read-only and its statements stop after 30 s.

SELECT format('CREATE ROLE %I LOGIN', :'reader')
WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'reader') \gexec

ALTER ROLE :"reader" WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION
    CONNECTION LIMIT 10 PASSWORD :'reader_password';
ALTER ROLE :"reader" SET default_transaction_read_only = on;
ALTER ROLE :"reader" SET statement_timeout = '30s';

GRANT USAGE ON SCHEMA public TO :"reader";

-- the network
GRANT SELECT (id, name, timezone, currency, applied_at) ON network TO :"reader";
GRANT SELECT (id, name, retired_at, updated_at) ON partners TO :"reader";
GRANT SELECT ON meters, exchanges, exchange_meters, balances, balance_meters TO :"reader";

-- measurements and what the rules engine made of them (readings: its partitions are read
-- through it, with its privileges)
GRANT SELECT ON readings, meter_windows, exchange_windows, reconciliations,
    reconciliation_meters TO :"reader";
GRANT SELECT ON alerts, alert_events, incidents TO :"reader";
GRANT SELECT ON ingest_counts TO :"reader";
GRANT SELECT (id, received_at, topic, partner_id, meter_id, reason, detail)
    ON rejections TO :"reader";

-- the backlogs
GRANT SELECT ON dirty_windows, dirty_subjects TO :"reader";
GRANT SELECT (id, event_key, channel, status, attempts, next_attempt_at, expires_at,
              delivered_at, created_at) ON outbox TO :"reader";
GRANT SELECT (id, outbox_id, attempt, at, ok, retryable, status_code, duration_ms)
    ON deliveries TO :"reader";

-- which statements were issued, not what they say
GRANT SELECT (id, partner_id, month, revision, issued_at, document_number, content_hash)
    ON statements TO :"reader";
