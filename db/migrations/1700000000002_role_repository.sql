-- Up Migration

-- The plaintext roles table of the first release. Workers move its rows into the encrypted
-- repository at start (activities/roles/bootstrap.ts) and empty it; a later release drops it.
ALTER TABLE roles RENAME TO legacy_roles;
-- The first release's seeded defaults: reps/ ships them again, with access levels and handles.
DELETE FROM legacy_roles WHERE version = '1.0.0' AND name IN ('generalist', 'writer', 'reviewer');

-- One row per published (name, version): immutable except for key rotation and deprecation.
-- The body (the profile as written plus its resolved form) is AES-256-GCM ciphertext.
CREATE TABLE role_versions (
  name               text NOT NULL,
  version            text NOT NULL,
  schema_version     int NOT NULL,
  checksum           text NOT NULL,
  key_id             text NOT NULL,
  iv                 bytea NOT NULL,
  auth_tag           bytea NOT NULL,
  ciphertext         bytea NOT NULL,
  published_at       timestamptz NOT NULL DEFAULT now(),
  published_by       text NOT NULL,
  deprecated_at      timestamptz,
  deprecated_reason  text,
  PRIMARY KEY (name, version)
);

-- Per role: which version `latest` means (publish moves it up, rollback moves it back), and
-- whether the role is suspended (the router then sends its subtasks elsewhere).
CREATE TABLE role_heads (
  name              text PRIMARY KEY,
  latest            text NOT NULL,
  suspended_at      timestamptz,
  suspended_reason  text,
  updated_at        timestamptz NOT NULL DEFAULT now(),
  FOREIGN KEY (name, latest) REFERENCES role_versions (name, version)
);

-- Who changed what in the repository, when and why. Append-only.
CREATE TABLE role_audit (
  id       bigserial PRIMARY KEY,
  at       timestamptz NOT NULL DEFAULT now(),
  actor    text NOT NULL,
  action   text NOT NULL,
  name     text,
  version  text,
  reason   text,
  detail   jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX role_audit_name ON role_audit (name, id);

CREATE FUNCTION mare_reject_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION '% is append-only', TG_TABLE_NAME;
END $$;
CREATE TRIGGER role_audit_append_only BEFORE UPDATE OR DELETE ON role_audit
  FOR EACH ROW EXECUTE FUNCTION mare_reject_change();
CREATE TRIGGER role_audit_no_truncate BEFORE TRUNCATE ON role_audit
  FOR EACH STATEMENT EXECUTE FUNCTION mare_reject_change();

-- A published version keeps its identity and checksum; only its encryption and deprecation change.
CREATE FUNCTION role_versions_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'DELETE' THEN
    RAISE EXCEPTION 'published role versions cannot be deleted (deprecate them instead)';
  END IF;
  IF NEW.name <> OLD.name OR NEW.version <> OLD.version OR NEW.checksum <> OLD.checksum
     OR NEW.schema_version <> OLD.schema_version OR NEW.published_at <> OLD.published_at
     OR NEW.published_by <> OLD.published_by THEN
    RAISE EXCEPTION 'published role version %@% is immutable', OLD.name, OLD.version;
  END IF;
  RETURN NEW;
END $$;
CREATE TRIGGER role_versions_immutable BEFORE UPDATE OR DELETE ON role_versions
  FOR EACH ROW EXECUTE FUNCTION role_versions_immutable();
CREATE TRIGGER role_versions_no_truncate BEFORE TRUNCATE ON role_versions
  FOR EACH STATEMENT EXECUTE FUNCTION mare_reject_change();

-- Every worker's role cache listens on this channel; the payload is the role name.
CREATE FUNCTION notify_role_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_notify('mare_roles', NEW.name);
  RETURN NULL;
END $$;
CREATE TRIGGER role_versions_notify AFTER INSERT OR UPDATE ON role_versions
  FOR EACH ROW EXECUTE FUNCTION notify_role_change();
CREATE TRIGGER role_heads_notify AFTER INSERT OR UPDATE ON role_heads
  FOR EACH ROW EXECUTE FUNCTION notify_role_change();

-- How each subtask's role was chosen and what it was given.
ALTER TABLE subtasks
  ADD COLUMN role_requested        text,
  ADD COLUMN role_routed_by        text,
  ADD COLUMN role_fallback_reason  text,
  ADD COLUMN role_source           text,
  ADD COLUMN role_checksum         text,
  ADD COLUMN context_digests       text[];

-- Down Migration
ALTER TABLE subtasks
  DROP COLUMN role_requested, DROP COLUMN role_routed_by, DROP COLUMN role_fallback_reason,
  DROP COLUMN role_source, DROP COLUMN role_checksum, DROP COLUMN context_digests;
DROP TABLE role_heads, role_versions;
DROP TABLE role_audit;
DROP FUNCTION notify_role_change, role_versions_immutable, mare_reject_change;
ALTER TABLE legacy_roles RENAME TO roles;
