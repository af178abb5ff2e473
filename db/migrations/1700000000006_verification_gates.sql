-- Up Migration

-- Work that failed verification can escalate to a person, through the same approvals.
ALTER TABLE approvals DROP CONSTRAINT approvals_kind_check;
ALTER TABLE approvals ADD CONSTRAINT approvals_kind_check CHECK (kind IN ('tool', 'model', 'verification'));

-- Task-level verification stores its evidence like a subtask's, under the pseudo subtask "(task)".
ALTER TABLE tasks ADD COLUMN evidence_id text;

-- Down Migration
ALTER TABLE tasks DROP COLUMN evidence_id;
DELETE FROM approvals WHERE kind = 'verification';
ALTER TABLE approvals DROP CONSTRAINT approvals_kind_check;
ALTER TABLE approvals ADD CONSTRAINT approvals_kind_check CHECK (kind IN ('tool', 'model'));
