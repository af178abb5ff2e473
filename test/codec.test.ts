import { execFile } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import type http from 'node:http';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Writable } from 'node:stream';
import { defaultPayloadConverter, type Payload } from '@temporalio/common';
import pino from 'pino';
import { newKey, type Keyring } from '../infra/crypto/keyring';
import { createCodecServer } from '../servers/codecServer';
import { listen } from '../servers/httpKit';
import { taskWorkflowId } from '../core/constants';
import { EncryptionCodec, ENCRYPTED_ENCODING, KEY_ID_METADATA, PayloadIntegrityError, PayloadKeyError, payloadKeyringFromEnv } from '../infra/crypto/payloadCodec';
import { resolveTemporalCli } from '../dev/temporal';
import { createTestStack, historyOf, planReply, type ScriptInput, type TestStack } from './helpers';

/** Runs a program and resolves with its standard output; a non-zero exit rejects with its standard error. */
function run(file: string, args: string[]): Promise<string> {
  return new Promise((resolve, reject) =>
    execFile(file, args, { maxBuffer: 64 * 1024 * 1024 }, (err, stdout, stderr) => (err ? reject(new Error(`${file} ${args.join(' ')}: ${stderr}`)) : resolve(stdout))),
  );
}

const keyringOf = (...keys: { id: string; key: Buffer }[]): Keyring => ({
  activeKeyId: keys.at(-1)!.id,
  keys: new Map(keys.map((k) => [k.id, k.key])),
  origin: 'test',
});
const text = (b: Uint8Array | null | undefined): string => Buffer.from(b ?? new Uint8Array()).toString('utf8');

describe('payload codec', () => {
  const old = newKey();
  const current = newKey();

  test('seals each payload under the active key, named in its metadata; decoding gives the original back', async () => {
    const codec = new EncryptionCodec(keyringOf(current));
    const original = defaultPayloadConverter.toPayload({ goal: 'top secret goal' });
    const [sealed] = await codec.encode([original]);
    expect(text(sealed?.metadata?.encoding)).toBe(ENCRYPTED_ENCODING);
    expect(text(sealed?.metadata?.[KEY_ID_METADATA])).toBe(current.id);
    expect(text(sealed?.data)).not.toContain('top secret');
    const [back] = await codec.decode([sealed!]);
    expect(defaultPayloadConverter.fromPayload(back!)).toEqual({ goal: 'top secret goal' });
  });

  test('after a rotation old payloads still decode, new ones use the new key; a retired key that was dropped is a PayloadKeyError', async () => {
    const before = new EncryptionCodec(keyringOf(old));
    const after = new EncryptionCodec(keyringOf(old, current));
    const [sealedBefore] = await before.encode([defaultPayloadConverter.toPayload('written before')]);
    expect(defaultPayloadConverter.fromPayload((await after.decode([sealedBefore!]))[0]!)).toBe('written before');
    const [sealedAfter] = await after.encode([defaultPayloadConverter.toPayload('written after')]);
    expect(text(sealedAfter?.metadata?.[KEY_ID_METADATA])).toBe(current.id);
    await expect(new EncryptionCodec(keyringOf(current)).decode([sealedBefore!])).rejects.toThrow(PayloadKeyError);
    await expect(new EncryptionCodec(keyringOf(current)).decode([sealedBefore!])).rejects.toThrow(old.id);
  });

  test('a changed byte fails authentication; payloads written before encryption pass through', async () => {
    const codec = new EncryptionCodec(keyringOf(current));
    const [sealed] = await codec.encode([defaultPayloadConverter.toPayload('intact')]);
    const data = Buffer.from(sealed!.data!);
    data[20] = (data[20] ?? 0) ^ 1;
    await expect(codec.decode([{ ...sealed!, data }])).rejects.toThrow(PayloadIntegrityError);
    const plain = defaultPayloadConverter.toPayload('plain');
    expect(await codec.decode([plain])).toEqual([plain]);
  });

  test('keys come from MARE_PAYLOAD_KEYS (active: MARE_PAYLOAD_ACTIVE_KEY or the last); none configured means encryption off; bad keys are typed errors', () => {
    const dataDir = mkdtempSync(path.join(tmpdir(), 'mare-payload-keys-'));
    const b64 = (k: Buffer): string => k.toString('base64');
    const both = `${old.id}:${b64(old.key)},${current.id}:${b64(current.key)}`;
    expect(payloadKeyringFromEnv({ env: { MARE_PAYLOAD_KEYS: both }, dataDir })?.activeKeyId).toBe(current.id);
    expect(payloadKeyringFromEnv({ env: { MARE_PAYLOAD_KEYS: both, MARE_PAYLOAD_ACTIVE_KEY: old.id }, dataDir })?.activeKeyId).toBe(old.id);
    expect(payloadKeyringFromEnv({ env: {}, dataDir })).toBeUndefined();
    expect(payloadKeyringFromEnv({ env: { MARE_PAYLOAD_KEYS: 'none' }, dataDir, generate: true })).toBeUndefined();
    expect(() => payloadKeyringFromEnv({ env: { MARE_PAYLOAD_KEYS: 'k1:c2hvcnQ=' }, dataDir })).toThrow(PayloadKeyError);
    expect(() => payloadKeyringFromEnv({ env: { MARE_PAYLOAD_KEY_FILE: path.join(dataDir, 'missing.json') }, dataDir })).toThrow(PayloadKeyError);
    const generated = payloadKeyringFromEnv({ env: {}, dataDir, generate: true });
    expect(existsSync(path.join(dataDir, 'payload-keys.json'))).toBe(true);
    expect(payloadKeyringFromEnv({ env: {}, dataDir })?.activeKeyId).toBe(generated?.activeKeyId);
    rmSync(dataDir, { recursive: true, force: true });
  });
});

describe('codec server', () => {
  const TOKEN = 'codec-token-0123456789abcdef';
  const UI = 'http://localhost:8233';
  const keyring = keyringOf(newKey());
  const logged: string[] = [];
  let server: http.Server;
  let base: string;

  beforeAll(async () => {
    const sink = new Writable({
      write(chunk: Buffer, _enc, done) {
        logged.push(chunk.toString('utf8'));
        done();
      },
    });
    server = createCodecServer({ keyring, token: TOKEN, corsOrigins: [UI], logger: pino({ level: 'info' }, sink) });
    const { port } = await listen(server, 0, '127.0.0.1');
    base = `http://127.0.0.1:${port}`;
  });
  afterAll(async () => {
    await new Promise<void>((resolve) => server.close(() => resolve()));
  });

  const asJson = (p: Payload): { metadata: Record<string, string>; data: string } => ({
    metadata: Object.fromEntries(Object.entries(p.metadata ?? {}).map(([k, v]) => [k, Buffer.from(v).toString('base64')])),
    data: Buffer.from(p.data!).toString('base64'),
  });
  const post = (route: string, payloads: Payload[], headers: Record<string, string> = {}): Promise<Response> =>
    fetch(`${base}${route}`, { method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body: JSON.stringify({ payloads: payloads.map(asJson) }) });

  test('/decode without the token is refused (401); with it, as a bearer token or as the path prefix, it decodes', async () => {
    const [sealed] = await new EncryptionCodec(keyring).encode([defaultPayloadConverter.toPayload({ secret: 'the plaintext' })]);
    const refused = await post('/decode', [sealed!]);
    expect(refused.status).toBe(401);
    expect(JSON.stringify(await refused.json())).not.toContain('the plaintext');
    expect((await post('/decode', [sealed!], { authorization: 'Bearer not-the-token-at-all' })).status).toBe(401);
    expect((await post('/token/wrong-token-0123456789/decode', [sealed!])).status).toBe(401);

    for (const answer of [await post('/decode', [sealed!], { authorization: `Bearer ${TOKEN}` }), await post(`/token/${TOKEN}/decode`, [sealed!])]) {
      expect(answer.status).toBe(200);
      const body = (await answer.json()) as { payloads: { metadata: Record<string, string>; data: string }[] };
      const decoded = body.payloads[0]!;
      expect(JSON.parse(Buffer.from(decoded.data, 'base64').toString('utf8'))).toEqual({ secret: 'the plaintext' });
    }
    // binary/null (a void result) decodes as JSON null, which the Web UI can parse.
    const [sealedNull] = await new EncryptionCodec(keyring).encode([defaultPayloadConverter.toPayload(undefined)]);
    expect(Buffer.from(sealedNull!.metadata!.encoding!).toString()).toBe(ENCRYPTED_ENCODING);
    const nullAnswer = (await (await post('/decode', [sealedNull!], { authorization: `Bearer ${TOKEN}` })).json()) as { payloads: { metadata: Record<string, string>; data: string }[] };
    expect(Buffer.from(nullAnswer.payloads[0]!.metadata.encoding!, 'base64').toString()).toBe('json/plain');
    expect(JSON.parse(Buffer.from(nullAnswer.payloads[0]!.data, 'base64').toString())).toBeNull();
    // /encode gives what the workers' codec decodes.
    const encoded = (await (await post('/encode', [defaultPayloadConverter.toPayload('from the UI')], { authorization: `Bearer ${TOKEN}` })).json()) as {
      payloads: { metadata: Record<string, string>; data: string }[];
    };
    const back = encoded.payloads.map((p) => ({ metadata: Object.fromEntries(Object.entries(p.metadata).map(([k, v]) => [k, Buffer.from(v, 'base64')])), data: Buffer.from(p.data, 'base64') }));
    expect(defaultPayloadConverter.fromPayload((await new EncryptionCodec(keyring).decode(back))[0]!)).toBe('from the UI');
    // Neither payloads nor the token reach the log.
    const log = logged.join('');
    expect(log).toContain('/token/***/decode');
    expect(log).not.toContain(TOKEN);
    expect(log).not.toContain('the plaintext');
    expect(log).not.toContain('from the UI');
  });

  test('CORS answers the UI origin only: another origin gets no CORS header, in the preflight or the answer', async () => {
    const preflight = (origin: string): Promise<Response> =>
      fetch(`${base}/decode`, { method: 'OPTIONS', headers: { origin, 'access-control-request-method': 'POST', 'access-control-request-headers': 'authorization,content-type,x-namespace' } });
    const ok = await preflight(UI);
    expect(ok.status).toBe(204);
    expect(ok.headers.get('access-control-allow-origin')).toBe(UI);
    expect(ok.headers.get('access-control-allow-headers')).toContain('x-namespace');
    const other = await preflight('https://evil.example');
    expect(other.headers.get('access-control-allow-origin')).toBeNull();
    const [sealed] = await new EncryptionCodec(keyring).encode([defaultPayloadConverter.toPayload(1)]);
    const fromOther = await post('/decode', [sealed!], { authorization: `Bearer ${TOKEN}`, origin: 'https://evil.example' });
    expect(fromOther.headers.get('access-control-allow-origin')).toBeNull();
    const fromUi = await post('/decode', [sealed!], { authorization: `Bearer ${TOKEN}`, origin: UI });
    expect(fromUi.headers.get('access-control-allow-origin')).toBe(UI);
  });

  test('a malformed body is a 400; a payload under an unknown key is a 422 naming the key; other routes are 404', async () => {
    const bad = await fetch(`${base}/decode`, { method: 'POST', headers: { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json' }, body: '{"payloads": [{"data": 42}]}' });
    expect(bad.status).toBe(400);
    const stranger = newKey();
    const [foreign] = await new EncryptionCodec(keyringOf(stranger)).encode([defaultPayloadConverter.toPayload(1)]);
    const unknown = await post('/decode', [foreign!], { authorization: `Bearer ${TOKEN}` });
    expect(unknown.status).toBe(422);
    expect(((await unknown.json()) as { error: string }).error).toContain(stranger.id);
    expect((await fetch(`${base}/other`, { method: 'POST' })).status).toBe(404);
  });
});

describe('payloads at rest in the Temporal database', () => {
  const CANARY = 'canary-7f3a9c-plaintext';
  const script: ScriptInput = {
    // No rule for the subtask's model call: it fails with an error naming the script, i.e. the canary.
    name: `${CANARY}-in-a-failure`,
    rules: [planReply([{ id: 'only', title: 'Do the thing', instructions: 'Do it', role: 'writer' }])],
  };

  /** Runs one task whose goal (and a failure's message) carry the canary; returns the server's SQLite files' bytes. */
  async function runAndReadDatabase(
    payloadKeyring: Keyring | undefined,
    whileUp: (stack: TestStack) => Promise<void> = () => Promise.resolve(),
  ): Promise<{ bytes: string; failures: { message: string; encoding: string }[] }> {
    const dir = mkdtempSync(path.join(tmpdir(), 'mare-at-rest-'));
    const dbFilename = path.join(dir, 'temporal.sqlite');
    const stack = await createTestStack({ dbFilename, ...(payloadKeyring ? { payloadKeyring } : {}) });
    try {
      await stack.withWorker(script, async () => {
        await stack.client.submitTask({ taskId: 'at-rest', goal: `Summarize ${CANARY} for the board` });
        await stack.client.result('at-rest');
      });
      const failures = (await historyOf(stack, taskWorkflowId('at-rest')))
        .flatMap((e) => [e.childWorkflowExecutionFailedEventAttributes?.failure, e.activityTaskFailedEventAttributes?.failure, e.workflowExecutionFailedEventAttributes?.failure])
        .filter((f) => f)
        .map((f) => ({ message: f!.message ?? '', encoding: text(f!.encodedAttributes?.metadata?.encoding) }));
      await whileUp(stack);
      await stack.teardown();
      const bytes = ['', '-wal'].map((suffix) => (existsSync(dbFilename + suffix) ? readFileSync(dbFilename + suffix).toString('latin1') : '')).join('');
      return { bytes, failures };
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }

  test('with a payload key the canary is nowhere in the database files, failure messages included (without one it is there: the control); the Temporal CLI decodes through the codec server', async () => {
    const plain = await runAndReadDatabase(undefined);
    expect(plain.bytes).toContain(CANARY);

    const keyring = keyringOf(newKey());
    const sealed = await runAndReadDatabase(keyring, async (stack) => {
      // The Temporal CLI shows the ciphertext, and the plaintext through the codec server with the token.
      const token = 'cli-token-0123456789abcdef';
      const server = createCodecServer({ keyring, token });
      const { port } = await listen(server, 0, '127.0.0.1');
      try {
        const firstInput = async (...codec: string[]): Promise<{ metadata: Record<string, string>; data: string }> => {
          const out = await run(await resolveTemporalCli(), ['workflow', 'show', '-w', taskWorkflowId('at-rest'), '--address', stack.env.address, '-o', 'json', ...codec]);
          const history = JSON.parse(out) as { events: { workflowExecutionStartedEventAttributes?: { input: { payloads: { metadata: Record<string, string>; data: string }[] } } }[] };
          return history.events[0]!.workflowExecutionStartedEventAttributes!.input.payloads[0]!;
        };
        const raw = await firstInput();
        expect(Buffer.from(raw.metadata.encoding!, 'base64').toString()).toBe(ENCRYPTED_ENCODING);
        const decoded = await firstInput('--codec-endpoint', `http://127.0.0.1:${port}`, '--codec-auth', `Bearer ${token}`);
        expect(JSON.parse(Buffer.from(decoded.data, 'base64').toString())).toMatchObject({ taskId: 'at-rest', goal: `Summarize ${CANARY} for the board` });
      } finally {
        await new Promise<void>((resolve) => server.close(() => resolve()));
      }
    });
    expect(sealed.bytes.length).toBeGreaterThan(0);
    expect(sealed.bytes).not.toContain(CANARY);
    expect(sealed.bytes).not.toContain('Summarize');
    // Failures carry a headline that gives nothing away (ids, statuses, types); message and stack trace
    // are in the encrypted attributes. The task's own failure says what happened without the codec.
    expect(sealed.failures.length).toBeGreaterThan(0);
    for (const f of sealed.failures) {
      expect(f.encoding).toBe(ENCRYPTED_ENCODING);
      expect(f.message).not.toContain(CANARY);
    }
    expect(sealed.failures.at(-1)?.message).toMatch(/^task at-rest COMPENSATED: subtask only failed after 1 attempt\(s\): \w+; 0 of 0 undo steps done$/);
  }, 180_000);
});
