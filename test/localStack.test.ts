import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Connection } from '@temporalio/client';
import { METADATA_ENCODING_KEY } from '@temporalio/common';
import { taskWorkflowId } from '../core/constants';
import { createScratchDatabase } from '../infra/db/scratch';
import { DEMO_GOAL } from '../dev/demo';
import { ADMIN_DATABASE_URL, freePort } from './helpers';

// `npm start` (`mare demo`) and `mare dev` as a user runs them, from dist/, each in a data directory
// of its own: payload encryption on (a key generated there on first start) and off (MARE_PAYLOAD_KEYS=none).
const CLI = path.join(__dirname, '..', 'dist', 'cli', 'mare.js');

let dir: string;
const dbs: { drop(): Promise<void> }[] = [];
beforeAll(() => {
  dir = mkdtempSync(path.join(tmpdir(), 'mare-local-stack-'));
});
afterAll(async () => {
  for (const db of dbs) await db.drop();
  rmSync(dir, { recursive: true, force: true });
});

/**
 * The environment of a `mare` process of this test: a data directory (its keys) and a database of
 * its own (role profiles there are sealed under that directory's role key), no keys inherited.
 */
async function envFor(dataDir: string, extra: Record<string, string> = {}): Promise<NodeJS.ProcessEnv> {
  const db = await createScratchDatabase(ADMIN_DATABASE_URL, `mare_test_${process.pid}_${path.basename(dataDir).replace(/\W/g, '_')}`);
  dbs.push(db);
  const env: NodeJS.ProcessEnv = { ...process.env, MARE_DATA_DIR: dataDir, DATABASE_URL: db.url, MARE_LOG_LEVEL: 'warn', ...extra };
  for (const name of ['MARE_ROLE_KEYS', 'MARE_ROLE_ACTIVE_KEY', 'MARE_ROLE_KEY_FILE', 'MARE_PAYLOAD_ACTIVE_KEY', 'MARE_PAYLOAD_KEY_FILE', 'TEMPORAL_ADDRESS', 'MARE_MODEL']) delete env[name];
  if (!extra.MARE_PAYLOAD_KEYS) delete env.MARE_PAYLOAD_KEYS;
  return env;
}

function mare(env: NodeJS.ProcessEnv, ...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [CLI, ...args], { env, maxBuffer: 16 * 2 ** 20 }, (err, stdout, stderr) =>
      resolve({ code: err ? (typeof err.code === 'number' ? err.code : 1) : 0, stdout, stderr }),
    );
  });
}

async function ports(): Promise<{ port: number; ui: number; codec: number; args: string[] }> {
  const [port, ui, codec] = [await freePort(), await freePort(), await freePort()];
  return { port, ui, codec, args: ['--port', String(port), '--ui-port', String(ui), '--codec-port', String(codec)] };
}

/** Resolves with everything `child` printed once a line contains `marker`; rejects if it exits first. */
function waitForOutput(child: ChildProcess, marker: string): Promise<string> {
  let out = '';
  return new Promise((resolve, reject) => {
    const onData = (chunk: Buffer): void => {
      out += chunk.toString();
      if (out.includes(marker)) resolve(out);
    };
    child.stdout!.on('data', onData);
    child.stderr!.on('data', onData);
    child.once('exit', (code) => reject(new Error(`mare exited (${code}) before printing "${marker}":\n${out}`)));
  });
}

/** The encodings of the payloads in a workflow's history (the metadata Temporal stores), what must stay readable aside. */
async function payloadEncodings(address: string, workflowId: string): Promise<Set<string>> {
  const connection = await Connection.connect({ address });
  try {
    const { history } = await connection.workflowService.getWorkflowExecutionHistory({ namespace: 'default', execution: { workflowId } });
    const encodings = new Set<string>();
    const walk = (v: unknown, at: string): void => {
      if (!v || typeof v !== 'object') return;
      const meta = (v as { metadata?: Record<string, Uint8Array> }).metadata;
      if (meta?.[METADATA_ENCODING_KEY] && 'data' in v) encodings.add(Buffer.from(meta[METADATA_ENCODING_KEY]).toString());
      for (const [key, child] of Object.entries(v)) {
        // Search attributes stay readable by design (the server indexes them), and so does the
        // local-activity marker's own record (activity type, attempt, time) that Core writes; its result is sealed.
        if (key === 'searchAttributes' || (key === 'data' && at.endsWith('markerRecordedEventAttributes.details'))) continue;
        walk(child, `${at}.${key}`);
      }
    };
    walk(history?.events ?? [], '');
    return encodings;
  } finally {
    await connection.close();
  }
}

describe.each([
  ['on', {}],
  ['off', { MARE_PAYLOAD_KEYS: 'none' }],
])('payload encryption %s', (mode, extra: Record<string, string>) => {
  const encrypted = mode === 'on';

  test('npm start (mare demo) runs the demo task to COMPLETED and says how payloads are stored', async () => {
    const dataDir = path.join(dir, `demo-${mode}`);
    const { args } = await ports();
    const demo = await mare(await envFor(dataDir, extra), 'demo', ...args);
    expect(demo.stderr).not.toMatch(/mare: /);
    expect(demo.code).toBe(0);
    expect(demo.stdout).toMatch(/Task demo-\S+: COMPLETED/);
    if (encrypted) {
      expect(demo.stdout).toContain(`generated one into ${path.join(dataDir, 'payload-keys.json')}`);
      expect(demo.stdout).toMatch(/Payloads: +encrypted \(AES-256-GCM\)/);
      expect(demo.stdout).toMatch(/Codec server: +http:\/\/127\.0\.0\.1:\d+/);
    } else {
      expect(demo.stdout).toMatch(/Payloads: +not encrypted \(MARE_PAYLOAD_KEYS=none\)/);
      expect(demo.stdout).not.toContain('Codec server:');
    }
    expect(existsSync(path.join(dataDir, 'payload-keys.json'))).toBe(encrypted);
  });

  test('mare dev serves a task submitted with `mare run`, its payloads stored as the mode says, and stops on SIGINT', async () => {
    const dataDir = path.join(dir, `dev-${mode}`);
    const { port, codec, args } = await ports();
    const env = await envFor(dataDir, extra);
    const dev = spawn(process.execPath, [CLI, 'dev', ...args], { env, stdio: ['ignore', 'pipe', 'pipe'] });
    const exited = new Promise<number | null>((resolve) => dev.once('exit', (code) => resolve(code)));
    try {
      const banner = await waitForOutput(dev, 'Press Ctrl-C to stop');
      expect(banner).toContain(encrypted ? 'Payloads:       encrypted (AES-256-GCM)' : 'Payloads:       not encrypted');
      const codecUp = await fetch(`http://127.0.0.1:${codec}/healthz`).then(
        (r) => r.status,
        () => 'refused',
      );
      // With encryption on the codec server answers; off, there is nothing to decode and nothing listens.
      expect(codecUp).toBe(encrypted ? 200 : 'refused');

      const address = `127.0.0.1:${port}`;
      const run = await mare({ ...env, TEMPORAL_ADDRESS: address }, 'run', DEMO_GOAL, '--id', `dev-${mode}`, '--wait', '--json');
      expect(run.stderr).toBe('');
      expect(JSON.parse(run.stdout)).toMatchObject({ taskId: `dev-${mode}`, status: 'COMPLETED' });
      const encodings = await payloadEncodings(address, taskWorkflowId(`dev-${mode}`));
      expect([...encodings]).toEqual(encrypted ? ['binary/encrypted'] : expect.arrayContaining(['json/plain']));
      if (!encrypted) expect(encodings.has('binary/encrypted')).toBe(false);
    } finally {
      dev.kill('SIGINT');
    }
    expect(await exited).toBe(0);
  });
});
