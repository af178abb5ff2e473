-- Up Migration

-- One row per finished embodiment (one executeSubtask run of one role version), for the
-- reliability report and the role supervisor. The key is the subtask workflow id plus the
-- embodiment number, so a retried write is a no-op.
CREATE TABLE embodiments (
  embodiment_key  text PRIMARY KEY,
  task_id         text NOT NULL,
  subtask_id      text NOT NULL,
  role            text NOT NULL,
  role_version    text NOT NULL,
  models          text[] NOT NULL,
  outcome         text NOT NULL CHECK (outcome IN ('completed', 'failed', 'cancelled', 'escalated')),
  score           double precision NOT NULL,
  attempts        int NOT NULL,
  escalations     int NOT NULL DEFAULT 0,
  latency_ms      int NOT NULL,
  input_tokens    int NOT NULL,
  output_tokens   int NOT NULL,
  started_at      timestamptz NOT NULL,
  ended_at        timestamptz NOT NULL,
  recorded_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX embodiments_role_version_ended ON embodiments (role, role_version, ended_at);
CREATE INDEX embodiments_role_started ON embodiments (role, started_at);

-- Every enforcement decision (warning, throttling, suspension and their reversal) with its reason
-- and the evidence it was based on. Append-only; the key makes a retried write a no-op.
CREATE TABLE enforcement_actions (
  id            bigserial PRIMARY KEY,
  action_key    text UNIQUE NOT NULL,
  role          text NOT NULL,
  role_version  text,
  action        text NOT NULL CHECK (action IN ('warning', 'throttle', 'unthrottle', 'suspend', 'reinstate')),
  reason        text NOT NULL,
  evidence      jsonb NOT NULL DEFAULT '{}',
  decided_by    text NOT NULL,
  at            timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX enforcement_actions_role_at ON enforcement_actions (role, at);
CREATE TRIGGER enforcement_actions_append_only BEFORE UPDATE OR DELETE ON enforcement_actions
  FOR EACH ROW EXECUTE FUNCTION mare_reject_change();
CREATE TRIGGER enforcement_actions_no_truncate BEFORE TRUNCATE ON enforcement_actions
  FOR EACH STATEMENT EXECUTE FUNCTION mare_reject_change();

-- A throttled role runs at most throttle_cap embodiments at once (NULL: no cap; suspension is
-- the way to run none).
ALTER TABLE role_heads
  ADD COLUMN throttle_cap     int CHECK (throttle_cap IS NULL OR throttle_cap >= 1),
  ADD COLUMN throttled_at     timestamptz,
  ADD COLUMN throttle_reason  text;

-- Down Migration
ALTER TABLE role_heads DROP COLUMN throttle_cap, DROP COLUMN throttled_at, DROP COLUMN throttle_reason;
DROP TABLE enforcement_actions;
DROP TABLE embodiments;
