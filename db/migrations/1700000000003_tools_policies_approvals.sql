-- Up Migration

-- Policies: versioned documents of allow / deny / escalate rules. A published (name, version) is
-- immutable; `policy_heads` says which version of each policy is in force, or that it is disabled.
CREATE TABLE policy_versions (
  name            text NOT NULL,
  version         text NOT NULL,
  schema_version  int NOT NULL,
  checksum        text NOT NULL,
  document        jsonb NOT NULL,
  published_at    timestamptz NOT NULL DEFAULT now(),
  published_by    text NOT NULL,
  PRIMARY KEY (name, version)
);
CREATE TRIGGER policy_versions_immutable BEFORE UPDATE OR DELETE ON policy_versions
  FOR EACH ROW EXECUTE FUNCTION mare_reject_change();
CREATE TRIGGER policy_versions_no_truncate BEFORE TRUNCATE ON policy_versions
  FOR EACH STATEMENT EXECUTE FUNCTION mare_reject_change();

CREATE TABLE policy_heads (
  name             text PRIMARY KEY,
  latest           text NOT NULL,
  disabled_at      timestamptz,
  disabled_reason  text,
  updated_at       timestamptz NOT NULL DEFAULT now(),
  FOREIGN KEY (name, latest) REFERENCES policy_versions (name, version)
);

-- Who changed which policy, when and why. Append-only.
CREATE TABLE policy_audit (
  id       bigserial PRIMARY KEY,
  at       timestamptz NOT NULL DEFAULT now(),
  actor    text NOT NULL,
  action   text NOT NULL,
  name     text,
  version  text,
  reason   text,
  detail   jsonb NOT NULL DEFAULT '{}'
);
CREATE TRIGGER policy_audit_append_only BEFORE UPDATE OR DELETE ON policy_audit
  FOR EACH ROW EXECUTE FUNCTION mare_reject_change();
CREATE TRIGGER policy_audit_no_truncate BEFORE TRUNCATE ON policy_audit
  FOR EACH STATEMENT EXECUTE FUNCTION mare_reject_change();

-- Workers' policy caches listen on this channel; the payload is the policy name.
CREATE FUNCTION notify_policy_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_notify('mare_policies', NEW.name);
  RETURN NULL;
END $$;
CREATE TRIGGER policy_versions_notify AFTER INSERT ON policy_versions
  FOR EACH ROW EXECUTE FUNCTION notify_policy_change();
CREATE TRIGGER policy_heads_notify AFTER INSERT OR UPDATE ON policy_heads
  FOR EACH ROW EXECUTE FUNCTION notify_policy_change();

-- Every policy decision on a tool or model call, with the policy version and rule that made it.
CREATE TABLE policy_decisions (
  decision_key  text PRIMARY KEY,
  task_id       text NOT NULL,
  subtask_id    text NOT NULL,
  kind          text NOT NULL CHECK (kind IN ('tool', 'model')),
  target        text NOT NULL,
  decision      text NOT NULL CHECK (decision IN ('allow', 'deny', 'escalate')),
  reason        text NOT NULL,
  policy        text,
  rule          text,
  at            timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX policy_decisions_task ON policy_decisions (task_id);

-- Calls a policy escalated to a person: pending until decided by `decideApproval` or its deadline.
CREATE TABLE approvals (
  task_id          text NOT NULL,
  approval_id      text NOT NULL,
  subtask_id       text NOT NULL,
  workflow_id      text NOT NULL,
  call_key         text NOT NULL,
  kind             text NOT NULL CHECK (kind IN ('tool', 'model')),
  target           text NOT NULL,
  args             jsonb NOT NULL,
  reason           text NOT NULL,
  policy           text,
  status           text NOT NULL CHECK (status IN ('pending', 'approved', 'denied', 'timed_out')),
  deadline         timestamptz NOT NULL,
  requested_at     timestamptz NOT NULL DEFAULT now(),
  decided_at       timestamptz,
  decided_by       text,
  decision_reason  text,
  PRIMARY KEY (task_id, approval_id)
);
CREATE INDEX approvals_pending ON approvals (status) WHERE status = 'pending';

-- What an MCP tool call replaced, read once before the call through the tool's configured undo:
-- the source of truth for its compensation.
CREATE TABLE tool_snapshots (
  call_key    text PRIMARY KEY,
  task_id     text NOT NULL,
  tool        text NOT NULL,
  existed     boolean NOT NULL,
  content     text,
  taken_at    timestamptz NOT NULL DEFAULT now()
);

-- A finished call's result, so a retried activity returns it instead of calling the tool again.
ALTER TABLE tool_calls
  ADD COLUMN idempotency_key  text,
  ADD COLUMN result           jsonb;

-- Down Migration
ALTER TABLE tool_calls DROP COLUMN idempotency_key, DROP COLUMN result;
DROP TABLE tool_snapshots, approvals, policy_decisions, policy_heads, policy_versions, policy_audit;
DROP FUNCTION notify_policy_change;
