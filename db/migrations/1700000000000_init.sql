-- Up Migration

-- Role profiles, versioned; the highest version of a name is the one new embodiments load.
CREATE TABLE roles (
  name        text NOT NULL,
  version     text NOT NULL,
  profile     jsonb NOT NULL,
  created_at  timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (name, version)
);

CREATE TABLE tasks (
  task_id               text PRIMARY KEY,
  workflow_id           text NOT NULL,
  goal                  text NOT NULL,
  tenant                text NOT NULL,
  status                text NOT NULL,
  plan                  jsonb,
  plan_fallback_reason  text,
  result                jsonb,
  created_at            timestamptz NOT NULL DEFAULT now(),
  updated_at            timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE subtasks (
  task_id       text NOT NULL REFERENCES tasks(task_id),
  subtask_id    text NOT NULL,
  role          text NOT NULL,
  role_version  text NOT NULL,
  status        text NOT NULL,
  attempts      int NOT NULL,
  score         double precision NOT NULL,
  output        text NOT NULL,
  evidence_ids  text[] NOT NULL,
  usage         jsonb NOT NULL,
  error         text,
  updated_at    timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (task_id, subtask_id)
);

-- One row per tool call the workflow decided on (including denials); call_key is deterministic.
CREATE TABLE tool_calls (
  call_key    text PRIMARY KEY,
  task_id     text NOT NULL,
  subtask_id  text NOT NULL,
  tool        text NOT NULL,
  args        jsonb NOT NULL,
  status      text NOT NULL CHECK (status IN ('ok', 'error', 'denied')),
  detail      text,
  attempts    int NOT NULL DEFAULT 1,
  created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX tool_calls_task ON tool_calls (task_id);

-- What a workspace.write replaced, taken once before the write: the undo's source of truth.
CREATE TABLE workspace_snapshots (
  call_key    text PRIMARY KEY,
  task_id     text NOT NULL,
  path        text NOT NULL,
  existed     boolean NOT NULL,
  content     text,
  created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE model_calls (
  call_key       text PRIMARY KEY,
  task_id        text NOT NULL,
  subtask_id     text,
  purpose        text NOT NULL,
  model          text NOT NULL,
  offline        boolean NOT NULL,
  input_tokens   int NOT NULL,
  output_tokens  int NOT NULL,
  created_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX model_calls_task ON model_calls (task_id);

-- Evidence bundles, content-addressed: evidence_id is the sha256 of the canonical body.
CREATE TABLE evidence (
  evidence_id  text PRIMARY KEY,
  task_id      text NOT NULL,
  subtask_id   text NOT NULL,
  attempt      int NOT NULL,
  passed       boolean NOT NULL,
  score        double precision NOT NULL,
  body         jsonb NOT NULL,
  created_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE compensations (
  task_id     text NOT NULL,
  seq         int NOT NULL,
  call_key    text NOT NULL,
  subtask_id  text NOT NULL,
  tool        text NOT NULL,
  ok          boolean NOT NULL,
  detail      text NOT NULL,
  created_at  timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (task_id, call_key)
);

-- Large content (file bodies, long tool output), referenced from history by digest.
CREATE TABLE blobs (
  hash     text PRIMARY KEY,
  content  text NOT NULL,
  size     int NOT NULL
);

-- Append-only: event_key makes a retried activity's event a no-op.
CREATE TABLE audit_events (
  id         bigserial PRIMARY KEY,
  event_key  text NOT NULL UNIQUE,
  task_id    text NOT NULL,
  kind       text NOT NULL,
  data       jsonb NOT NULL,
  at         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX audit_events_task ON audit_events (task_id, id);

INSERT INTO roles (name, version, profile) VALUES
('generalist', '1.0.0', '{
  "name": "generalist", "version": "1.0.0",
  "description": "Does any small task end to end; the default when no better role fits.",
  "systemPrompt": "You are a careful generalist. Do exactly what the subtask asks, nothing more.",
  "toneGuide": "Plain, direct, brief.",
  "constraints": ["Stay inside the task workspace.", "Say what you did in one short paragraph."],
  "tools": ["workspace.read", "workspace.write", "workspace.list"],
  "confidenceThreshold": 0.6, "maxIterations": 8
}'),
('writer', '1.0.0', '{
  "name": "writer", "version": "1.0.0",
  "description": "Writes and revises documents in the workspace.",
  "systemPrompt": "You are a technical writer. You produce clear documents and save them as files in the workspace.",
  "toneGuide": "Friendly and precise; short sentences; no marketing language.",
  "constraints": ["Write Markdown.", "Every document starts with a level-1 heading."],
  "tools": ["workspace.read", "workspace.write", "workspace.list"],
  "confidenceThreshold": 0.7, "maxIterations": 8
}'),
('reviewer', '1.0.0', '{
  "name": "reviewer", "version": "1.0.0",
  "description": "Reviews documents and reports findings; may only read.",
  "systemPrompt": "You are a strict reviewer. You read the documents and report concrete findings. You never change files.",
  "toneGuide": "Neutral and specific; cite the file and line you mean.",
  "constraints": ["Never modify files.", "List findings as bullet points."],
  "tools": ["workspace.read", "workspace.list"],
  "confidenceThreshold": 0.7, "maxIterations": 6
}');

-- Down Migration
DROP TABLE audit_events, blobs, compensations, evidence, model_calls, workspace_snapshots, tool_calls, subtasks, tasks, roles;
