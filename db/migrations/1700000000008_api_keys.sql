-- Up Migration

-- Keys of the HTTP API (`mare keys create|list|revoke`), each bound to one tenant and a set of
-- scopes. Only the SHA-256 of the secret is stored: the secret is 256 random bits, so a plain hash
-- cannot be reversed by guessing, and the secret is shown once, when the key is created.
CREATE TABLE api_keys (
  id             text PRIMARY KEY,
  name           text NOT NULL,
  tenant         text NOT NULL,
  scopes         text[] NOT NULL CHECK (scopes <@ ARRAY['submit', 'read', 'approve', 'commands', 'admin']::text[] AND cardinality(scopes) > 0),
  secret_sha256  bytea NOT NULL CHECK (length(secret_sha256) = 32),
  created_by     text NOT NULL,
  created_at     timestamptz NOT NULL DEFAULT now(),
  revoked_at     timestamptz
);
-- A name is the identity recorded with an approval decision: one live key per name.
CREATE UNIQUE INDEX api_keys_live_name ON api_keys (name) WHERE revoked_at IS NULL;

-- Down Migration
DROP TABLE api_keys;
