-- Up Migration

-- The audit trail becomes a hash chain: each event carries its position (chain_seq), the hash of
-- the event before it (prev_hash) and its own hash over both and its content, so an edited,
-- deleted or reordered event breaks the chain at that point (`mare audit verify`,
-- activities/audit/chain.ts, which must compute byte-for-byte the same canonical text).
ALTER TABLE audit_events
  ADD COLUMN chain_seq  bigint UNIQUE,
  ADD COLUMN prev_hash  text,
  ADD COLUMN hash       text;

-- `at` as text for the hash: UTC ISO 8601 with microseconds; ' BC' after years before 1 AD (to_char
-- drops the era) and `infinity` / `-infinity` as PostgreSQL writes them (to_char gives NULL).
CREATE FUNCTION mare_audit_time(at timestamptz) RETURNS text LANGUAGE sql STABLE STRICT AS $$
  SELECT coalesce(
    to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') || CASE WHEN at < '0001-01-01T00:00:00Z' THEN ' BC' ELSE '' END,
    at::text)
$$;

-- The canonical text: a version line, then each field as `<UTF-8 byte length>:<value>\n`, so no
-- value can be mistaken for a separator; the hash is its sha256 in lower-case hex.
CREATE FUNCTION mare_audit_hash(seq bigint, prev text, event_key text, task_id text, kind text, data jsonb, at timestamptz)
RETURNS text LANGUAGE sql STABLE STRICT AS $$
  SELECT encode(sha256(convert_to(
    'mare-audit-v1' || E'\n' || string_agg(octet_length(convert_to(f, 'UTF8'))::text || ':' || f || E'\n', '' ORDER BY i),
    'UTF8')), 'hex')
  FROM unnest(ARRAY[seq::text, prev, event_key, task_id, kind, data::text, mare_audit_time(at)]) WITH ORDINALITY AS fields(f, i)
$$;

-- Backfill the events written before the chain, in id order.
DO $$
DECLARE
  r record;
  n bigint := 0;
  prev text := repeat('0', 64);
BEGIN
  FOR r IN SELECT id, event_key, task_id, kind, data, at FROM audit_events ORDER BY id LOOP
    n := n + 1;
    UPDATE audit_events
       SET chain_seq = n, prev_hash = prev, hash = mare_audit_hash(n, prev, r.event_key, r.task_id, r.kind, r.data, r.at)
     WHERE id = r.id
    RETURNING hash INTO prev;
  END LOOP;
END $$;

ALTER TABLE audit_events
  ALTER COLUMN chain_seq SET NOT NULL,
  ALTER COLUMN prev_hash SET NOT NULL,
  ALTER COLUMN hash SET NOT NULL;

-- Appends are serialised by a transaction-level advisory lock (a constant of this table's own), so
-- the newest committed event is the predecessor. An insert that ON CONFLICT skips has computed a
-- link but leaves no row, so the next insert computes the same one again: nothing is consumed.
-- Under REPEATABLE READ or SERIALIZABLE a writer may see a stale newest event; the UNIQUE chain_seq
-- then refuses its insert instead of forking the chain.
CREATE FUNCTION mare_audit_chain() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
  last_seq bigint;
  last_hash text;
BEGIN
  PERFORM pg_advisory_xact_lock(4850419436733908);
  SELECT chain_seq, hash INTO last_seq, last_hash FROM audit_events ORDER BY chain_seq DESC LIMIT 1;
  NEW.chain_seq := coalesce(last_seq, 0) + 1;
  NEW.prev_hash := coalesce(last_hash, repeat('0', 64));
  NEW.hash := mare_audit_hash(NEW.chain_seq, NEW.prev_hash, NEW.event_key, NEW.task_id, NEW.kind, NEW.data, NEW.at);
  RETURN NEW;
END $$;
CREATE TRIGGER audit_events_chain BEFORE INSERT ON audit_events
  FOR EACH ROW EXECUTE FUNCTION mare_audit_chain();

CREATE TRIGGER audit_events_append_only BEFORE UPDATE OR DELETE ON audit_events
  FOR EACH ROW EXECUTE FUNCTION mare_reject_change();
CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON audit_events
  FOR EACH STATEMENT EXECUTE FUNCTION mare_reject_change();

-- Down Migration
DROP TRIGGER audit_events_no_truncate ON audit_events;
DROP TRIGGER audit_events_append_only ON audit_events;
DROP TRIGGER audit_events_chain ON audit_events;
DROP FUNCTION mare_audit_chain, mare_audit_hash, mare_audit_time;
ALTER TABLE audit_events DROP COLUMN chain_seq, DROP COLUMN prev_hash, DROP COLUMN hash;
