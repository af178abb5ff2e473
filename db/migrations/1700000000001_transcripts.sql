-- Up Migration

-- Agent-loop transcripts, one per embodiment attempt. The workflow sends each message once; the
-- model activity stores it here and reads the whole transcript back, so history grows linearly.
CREATE TABLE transcript_messages (
  transcript_id  text NOT NULL,
  seq            int NOT NULL,
  message        jsonb NOT NULL,
  created_at     timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (transcript_id, seq)
);

-- Down Migration
DROP TABLE transcript_messages;
