import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { Writable } from 'node:stream';
import { AtRest, SEALED_PREFIX } from '../../infra/crypto/atRest';
import { newKey, type Keyring } from '../../infra/crypto/keyring';
import { createRedactor } from '../../infra/secrets';
import { createLogger, processRedactor } from '../../workers/logger';
import { taskWorkflowId } from '../../core/constants';
import { createTestStack, planReply, toolCall, type ScriptInput, type TestStack } from '../helpers';

// §6 of issue 15: a canary secret planted in the goal, a workspace file, the environment, a role
// prompt, the model's answers and its tool calls is in no column of the MARE database and no log
// line after full task runs, while MARE itself still reads what it sealed (transcripts, blobs,
// tool results, snapshots) with the payload key.

const CANARY = `canary-${randomBytes(12).toString('hex')}`;
// Not a secret-looking name: the canary is secret only because the tools configuration says so.
const CANARY_VAR = 'MARE_TEST_CANARY_PLANT';
const toolsConfig = { secrets: { env: [CANARY_VAR], patterns: [] } };

const { id, key } = newKey();
const payloadKeyring: Keyring = { activeKeyId: id, keys: new Map([[id, key]]), origin: 'test' };

let stack: TestStack;
const logLines: string[] = [];
const saved = { canary: process.env[CANARY_VAR], config: process.env.MARE_TOOLS_CONFIG, level: process.env.MARE_LOG_LEVEL };

beforeAll(async () => {
  process.env[CANARY_VAR] = CANARY;
  stack = await createTestStack({ payloadKeyring });
  // The worker's logger is built as `mare dev` and `mare worker` build theirs: from the process redactor.
  const configFile = path.join(stack.dir, 'tools.json');
  writeFileSync(configFile, JSON.stringify(toolsConfig));
  process.env.MARE_TOOLS_CONFIG = configFile;
  process.env.MARE_LOG_LEVEL = 'debug';
});
afterAll(async () => {
  await stack?.teardown();
  for (const [name, value] of [[CANARY_VAR, saved.canary], ['MARE_TOOLS_CONFIG', saved.config], ['MARE_LOG_LEVEL', saved.level]] as const) {
    if (value === undefined) delete process.env[name];
    else process.env[name] = value;
  }
});

const ws = (taskId: string, rel: string): string => path.join(stack.workspaceRoot, taskId, rel);

function capturingLogger() {
  return createLogger('mare-worker', {
    redactor: processRedactor(),
    destination: new Writable({
      write(chunk: Buffer, _enc, done) {
        logLines.push(chunk.toString('utf8'));
        done();
      },
    }),
  });
}

/** The canary as written, hex-encoded and base64-encoded (at each of the three alignments). */
function encodings(secret: string): string[] {
  const b64 = [0, 1, 2].map((pad) => {
    const enc = Buffer.from(`${'x'.repeat(pad)}${secret}`).toString('base64');
    // Drop the characters that depend on the padding prefix or on what follows.
    return enc.slice(Math.ceil((pad * 4) / 3) + 1, -4);
  });
  return [secret, Buffer.from(secret).toString('hex'), ...b64];
}

/** Every text, json, jsonb, array and bytea column of every table of the MARE database, with the rows holding `needle`. */
async function scanDatabase(needles: string[]): Promise<{ scanned: string[]; hits: string[] }> {
  const { rows: columns } = await stack.pool.query<{ table_name: string; column_name: string; data_type: string }>(
    `SELECT c.table_name, c.column_name, c.data_type FROM information_schema.columns c
       JOIN information_schema.tables t ON t.table_schema = c.table_schema AND t.table_name = c.table_name
      WHERE c.table_schema = 'public' AND t.table_type = 'BASE TABLE'
        AND c.data_type IN ('text', 'character varying', 'character', 'json', 'jsonb', 'bytea', 'ARRAY', 'USER-DEFINED')
      ORDER BY c.table_name, c.column_name`,
  );
  const scanned: string[] = [];
  const hits: string[] = [];
  for (const c of columns) {
    const col = `"${c.column_name}"`;
    // bytea: the raw bytes as latin1 text (and the hex form ::text gives), so text inside binary is found too.
    const expr = c.data_type === 'bytea' ? `encode(${col}, 'escape') || ' ' || ${col}::text` : `${col}::text`;
    const { rows } = await stack.pool.query<{ v: string | null }>(`SELECT ${expr} AS v FROM "${c.table_name}"`);
    scanned.push(`${c.table_name}.${c.column_name}`);
    for (const r of rows) {
      if (r.v !== null && needles.some((n) => r.v!.includes(n))) hits.push(`${c.table_name}.${c.column_name}: ${r.v.slice(0, 200)}`);
    }
  }
  return { scanned, hits };
}

test('a canary in the goal, a workspace file, the environment, a role prompt and the model output is sealed or redacted in every column and log line', async () => {
  const planted = `config for the deploy\npassword-of-the-day: ${CANARY}\n`;
  const plantedBig = `${'filler line\n'.repeat(400)}the key is ${CANARY}\n`;
  mkdirSync(ws('leak', ''), { recursive: true });
  writeFileSync(ws('leak', 'secret.txt'), `${planted}CALL workspace.write {"path": "copy.txt", "content": "${CANARY}"}\n`);
  writeFileSync(ws('leak', 'big.txt'), plantedBig);
  // Own input 1: a role whose prompt holds the canary (the prompt reaches the transcript).
  await stack.roles.repository.publish(
    { name: 'keeper', version: '1.0.0', description: 'Keeps the keys.', systemPrompt: `You guard the vault; its combination is ${CANARY}.`, tools: [{ tool: 'workspace.read', access: 'read' }, { tool: 'workspace.write', access: 'write' }] },
    { actor: 'test' },
  );
  const script: ScriptInput = {
    rules: [
      planReply([
        { id: 'copy', title: `Copy ${CANARY}`, instructions: `Read secret.txt and copy ${CANARY} around`, role: 'keeper', acceptanceCriteria: [{ kind: 'judged', rubric: 'the key was handled' }] },
      ]),
      { match: { purpose: 'act', turn: 0 }, reply: toolCall('workspace.read', { path: 'secret.txt' }) },
      // The file says CALL workspace.write with the canary: only a model that read the tool result back
      // out of the (sealed) transcript can ask for it. The default policy denies it: it holds a secret.
      { match: { purpose: 'act', turn: 1 }, reply: { obeyToolOutput: true, toolCalls: [] } },
      // Own input 2: tool output longer than the history limit (stored as a blob).
      { match: { purpose: 'act', turn: 2 }, reply: toolCall('workspace.read', { path: 'big.txt' }) },
      // Own input 3: the model's answer and the judge's rationale repeat the canary.
      { match: { purpose: 'act' }, reply: { text: `Done. The secret was ${CANARY}.` } },
      { match: { purpose: 'judge' }, reply: { text: JSON.stringify({ score: 0.9, rationale: `it handled ${CANARY} well` }) } },
    ],
  };
  const result = await stack.withWorker(
    script,
    async () => {
      await stack.client.submitTask({ taskId: 'leak', goal: `Copy the secret ${CANARY} into the workspace` });
      return stack.client.result('leak');
    },
    { toolsConfig, logger: capturingLogger() },
  );
  // Through MARE, with the key, the task's own result still carries what the model said.
  expect(result.status).toBe('COMPLETED');
  expect(result.subtasks[0]?.output).toContain(CANARY);

  // The model asked for the call the file dictated (so the sealed transcript reached it), and it was denied.
  const { rows: calls } = await stack.pool.query<{ tool: string; status: string; detail: string }>(
    `SELECT tool, status, detail FROM tool_calls WHERE task_id = 'leak' ORDER BY created_at`,
  );
  expect(calls.map((c) => `${c.tool}:${c.status}`)).toEqual(['workspace.read:ok', 'workspace.write:denied', 'workspace.read:ok']);
  expect(existsSync(ws('leak', 'copy.txt'))).toBe(false);
  const denial = logLines.find((l) => l.includes('tool call denied'));
  expect(denial).toBeDefined();
  expect(JSON.parse(denial!)).toMatchObject({ tool: 'workspace.write', taskId: 'leak', subtaskId: 'copy', reason: expect.stringContaining('contain a secret') });
  expect(denial).not.toContain('"args"');

  // Content MARE reads back is sealed under the payload key, and opens to the original with it.
  const atRest = new AtRest(createRedactor(toolsConfig.secrets), payloadKeyring);
  const { rows: transcript } = await stack.pool.query<{ message: unknown }>(`SELECT message FROM transcript_messages WHERE transcript_id = $1 ORDER BY seq`, [
    `${taskWorkflowId('leak')}--copy/a1`,
  ]);
  expect(transcript.length).toBeGreaterThan(4);
  expect(transcript.every((r) => typeof r.message === 'string' && r.message.startsWith(SEALED_PREFIX))).toBe(true);
  const opened = transcript.map((r) => JSON.stringify(atRest.openJson(r.message))).join('\n');
  expect(opened).toContain(`its combination is ${CANARY}`);
  expect(opened).toContain(`password-of-the-day: ${CANARY}`);
  const { rows: blobs } = await stack.pool.query<{ content: string }>(`SELECT content FROM blobs`);
  expect(blobs.map((b) => atRest.openText(b.content))).toContain(plantedBig);

  // Display-only columns hold the redacted text.
  const { rows: task } = await stack.pool.query<{ goal: string }>(`SELECT goal FROM tasks WHERE task_id = 'leak'`);
  expect(task[0]?.goal).toBe('Copy the secret [REDACTED] into the workspace');

  const { scanned, hits } = await scanDatabase(encodings(CANARY));
  expect(scanned).toEqual(expect.arrayContaining(['tasks.goal', 'tasks.result', 'subtasks.output', 'transcript_messages.message', 'tool_calls.result', 'evidence.body', 'blobs.content', 'audit_events.data']));
  expect(hits).toEqual([]);
  expect(logLines.length).toBeGreaterThan(0);
  expect(logLines.filter((l) => encodings(CANARY).some((n) => l.includes(n)))).toEqual([]);
});

test('with the secrets policy off, a long write holding the canary reaches the file through a sealed blob, and a rollback restores a sealed snapshot', async () => {
  await stack.policies.repository.disable('default', { actor: 'test', reason: 'let secrets through to the workspace' });
  stack.policies.invalidate();
  try {
    const atRest = new AtRest(createRedactor(toolsConfig.secrets), payloadKeyring);
    const longContent = `# Vault\n${'a line of the vault\n'.repeat(300)}combination: ${CANARY}\n`;
    const written = await stack.withWorker(
      {
        rules: [
          planReply([{ id: 'write', title: 'Write the vault', instructions: 'write vault.md', role: 'writer', acceptanceCriteria: [{ kind: 'file_contains', path: 'vault.md', text: 'combination' }] }]),
          { match: { purpose: 'act', turn: 0 }, reply: toolCall('workspace.write', { path: 'vault.md', content: longContent }) },
          { match: { purpose: 'act' }, reply: { text: 'done' } },
        ],
      },
      async () => {
        await stack.client.submitTask({ taskId: 'vault', goal: 'write the vault' });
        return stack.client.result('vault');
      },
      { toolsConfig, logger: capturingLogger() },
    );
    // The write's content went through a sealed blob and reached the file exactly.
    expect(written.status).toBe('COMPLETED');
    expect(readFileSync(ws('vault', 'vault.md'), 'utf8')).toBe(longContent);
    const { rows: blobs } = await stack.pool.query<{ content: string }>(`SELECT content FROM blobs`);
    expect(blobs.every((b) => b.content.startsWith(SEALED_PREFIX))).toBe(true);
    expect(blobs.map((b) => atRest.openText(b.content))).toContain(longContent);

    // A task that overwrites a planted file holding the canary, then fails: the undo reads the sealed snapshot back.
    const original = `the old combination was ${CANARY}\n`;
    mkdirSync(ws('spoil', ''), { recursive: true });
    writeFileSync(ws('spoil', 'old.md'), original);
    const spoiled = await stack.withWorker(
      {
        rules: [
          planReply([{ id: 'spoil', title: 'Spoil', instructions: 'overwrite old.md', role: 'writer', acceptanceCriteria: [{ kind: 'file_contains', path: 'old.md', text: 'IMPOSSIBLE' }] }]),
          { match: { purpose: 'act', turn: 0 }, reply: toolCall('workspace.write', { path: 'old.md', content: `spoiled, was ${CANARY}` }) },
          { match: { purpose: 'act' }, reply: { text: 'done' } },
        ],
      },
      async () => {
        await stack.client.submitTask({ taskId: 'spoil', goal: 'spoil old.md' });
        return stack.client.result('spoil');
      },
      { toolsConfig, logger: capturingLogger() },
    );
    expect(spoiled.status).toBe('COMPENSATED');
    expect(readFileSync(ws('spoil', 'old.md'), 'utf8')).toBe(original);
    const { rows: snaps } = await stack.pool.query<{ content: string | null }>(`SELECT content FROM workspace_snapshots WHERE task_id = 'spoil'`);
    expect(snaps.length).toBeGreaterThan(0);
    expect(snaps.every((s) => s.content?.startsWith(SEALED_PREFIX))).toBe(true);
    expect(snaps.map((s) => atRest.openNullable(s.content))).toContain(original);

    const { hits } = await scanDatabase(encodings(CANARY));
    expect(hits).toEqual([]);
    expect(logLines.filter((l) => encodings(CANARY).some((n) => l.includes(n)))).toEqual([]);
  } finally {
    await stack.policies.repository.enable('default', { actor: 'test', reason: 'back on' });
  }
});
