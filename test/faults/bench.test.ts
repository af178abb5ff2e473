import { execFile } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { createScratchDatabase } from '../../infra/db/scratch';
import { ADMIN_DATABASE_URL, freePort } from '../helpers';
import type { BenchResult } from '../../bench/run';

// The bench as a smoke (no ratio asserted: ratios are measured by `npm run bench`, not by a timed
// test), run the way a new user runs it: after `npm start` has generated payload and role keys in
// the data directory, `npm run bench -- --quick` must run every workload and arm, O+enc included.
const ROOT = path.join(__dirname, '..', '..');

let dir: string;
let db: { url: string; drop(): Promise<void> } | undefined;
beforeAll(async () => {
  dir = mkdtempSync(path.join(tmpdir(), 'mare-bench-smoke-'));
  db = await createScratchDatabase(ADMIN_DATABASE_URL, `mare_test_${process.pid}_benchsmoke`);
});
afterAll(async () => {
  await db?.drop();
  rmSync(dir, { recursive: true, force: true });
});

function run(cmd: string, args: string[], env: NodeJS.ProcessEnv): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(cmd, args, { cwd: ROOT, env, maxBuffer: 64 * 2 ** 20 }, (err, stdout, stderr) => resolve({ code: err ? (typeof err.code === 'number' ? err.code : 1) : 0, stdout, stderr }));
  });
}

test('after npm start generated keys, npm run bench -- --quick runs every workload and arm to completion and says how payloads were encrypted', async () => {
  const dataDir = path.join(dir, 'data');
  const env: NodeJS.ProcessEnv = { ...process.env, MARE_DATA_DIR: dataDir, MARE_LOG_LEVEL: 'warn' };
  for (const name of ['MARE_ROLE_KEYS', 'MARE_ROLE_ACTIVE_KEY', 'MARE_ROLE_KEY_FILE', 'MARE_PAYLOAD_KEYS', 'MARE_PAYLOAD_ACTIVE_KEY', 'MARE_PAYLOAD_KEY_FILE', 'TEMPORAL_ADDRESS', 'MARE_MODEL']) delete env[name];

  // What `npm start` runs (the build is already done), with ports of its own and a database of its own.
  const ports = ['--port', String(await freePort()), '--ui-port', String(await freePort()), '--codec-port', String(await freePort())];
  const demo = await run(process.execPath, [path.join(ROOT, 'dist', 'cli', 'mare.js'), 'demo', ...ports], { ...env, DATABASE_URL: db!.url });
  expect(demo.code).toBe(0);
  expect(existsSync(path.join(dataDir, 'payload-keys.json'))).toBe(true);

  const out = path.join(dir, 'results');
  const bench = await run('npm', ['run', 'bench', '--', '--quick', '--out', out], env);
  expect(bench.stderr).not.toContain('bench failed');
  expect(bench.code).toBe(0);
  const json = readdirSync(out).find((f) => f.endsWith('-quick.json'));
  const result = JSON.parse(readFileSync(path.join(out, json!), 'utf8')) as BenchResult;
  const phases = result.reps[0]!.phases;
  expect(Object.keys(phases)).toEqual(expect.arrayContaining(['W1', 'W2', 'W3 M=1', 'W3 M=3', 'W3 M=10', 'W4']));
  expect(Object.keys(phases.W1!).sort()).toEqual(['B0', 'B1', 'O', 'O+enc']);
  expect(Object.keys(phases.W4!).sort()).toEqual(['B1', 'O', 'O+enc']);
  for (const [phase, arms] of Object.entries(phases)) {
    for (const [arm, f] of Object.entries(arms)) expect(`${phase} ${arm}: ${f.completed}/${f.tasks}`).toBe(`${phase} ${arm}: ${f.tasks}/${f.tasks}`);
  }
  const md = readFileSync(path.join(out, json!.replace(/\.json$/, '.md')), 'utf8');
  expect(md).toContain('payload encryption (client and worker alike): B0 off, B1 off, O off, O+enc AES-256-GCM');
  expect(md).toMatch(/^\| O\+enc\/B1 \|/m);
}, 1_800_000);
