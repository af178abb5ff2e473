import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';

// docker-compose.yml cannot be started here (no Docker engine), so it is loaded with compose-go, the
// parser Docker Compose uses (scripts/compose-check), and the normalized project is checked.
const ROOT = path.join(__dirname, '..');
const COMPOSE_FILE = path.join(ROOT, 'docker-compose.yml');
const CHECKER_SRC = path.join(ROOT, 'scripts', 'compose-check');

const SECRETS = {
  MARE_ROLE_KEYS: `r1:${randomBytes(32).toString('base64')}`,
  MARE_PAYLOAD_KEYS: `p1:${randomBytes(32).toString('base64')}`,
  MARE_CODEC_TOKEN: randomBytes(32).toString('hex'),
};

interface Port {
  target: number;
  published?: string;
  host_ip?: string;
}
interface Service {
  image?: string;
  build?: { context: string; dockerfile?: string };
  command?: string[] | null;
  entrypoint?: string[] | null;
  container_name?: string;
  ports?: Port[];
  environment?: Record<string, string | null>;
  depends_on?: Record<string, { condition: string; required?: boolean }>;
  deploy?: { replicas?: number };
  restart?: string;
  profiles?: string[];
  healthcheck?: { test?: string[] };
  configs?: { source: string; target?: string }[];
  volumes?: { type: string; source?: string; target: string }[];
}
interface Project {
  name: string;
  services: Record<string, Service>;
  configs?: Record<string, { content?: string }>;
  volumes?: Record<string, unknown>;
}
interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

let workDir: string;
let checker: string;

function run(cmd: string, args: string[], opts: { cwd?: string; env: NodeJS.ProcessEnv }): Promise<Run> {
  return new Promise((resolve) => {
    execFile(cmd, args, { ...opts, maxBuffer: 16 * 1024 * 1024 }, (err, stdout, stderr) =>
      resolve({ code: err ? (typeof err.code === 'number' ? err.code : 1) : 0, stdout, stderr }),
    );
  });
}

function goBinary(): string {
  const onPath = (process.env.PATH ?? '').split(path.delimiter).map((dir) => path.join(dir, 'go')).find((p) => existsSync(p));
  const found = onPath ?? ['/usr/local/go/bin/go'].find((p) => existsSync(p));
  if (!found) throw new Error('Go is needed to build scripts/compose-check (the compose-go parser): install Go or put `go` on PATH');
  return found;
}

/** Loads a compose file with compose-go; only the given variables are in its environment (no .env). */
function check(file: string, env: Record<string, string> = SECRETS, profiles: string[] = []): Promise<Run> {
  const args = [...profiles.flatMap((p) => ['--profile', p]), file];
  return run(checker, args, { env: { PATH: process.env.PATH, ...env } });
}

async function load(profiles: string[] = []): Promise<Project> {
  const res = await check(COMPOSE_FILE, SECRETS, profiles);
  if (res.code !== 0) throw new Error(`compose-check rejected docker-compose.yml (exit ${res.code}): ${res.stderr}`);
  return JSON.parse(res.stdout) as Project;
}

/** A copy of docker-compose.yml with `edit` applied, written to the temp dir. */
function brokenCopy(name: string, edit: (yaml: string) => string): string {
  const original = readFileSync(COMPOSE_FILE, 'utf8');
  const changed = edit(original);
  if (changed === original) throw new Error(`the edit for ${name} did not change the file: its anchor text is gone`);
  const file = path.join(workDir, `${name}.yml`);
  writeFileSync(file, changed);
  return file;
}

const addToWorker = (lines: string) => (yaml: string) => yaml.replace(/^ {2}worker:\n/m, `  worker:\n${lines}`);

beforeAll(async () => {
  workDir = mkdtempSync(path.join(tmpdir(), 'mare-compose-'));
  checker = path.join(workDir, 'compose-check');
  // The first build downloads compose-go through the Go module proxy; the binary goes to the temp dir.
  const built = await run(goBinary(), ['build', '-o', checker, '.'], {
    cwd: CHECKER_SRC,
    env: { ...process.env, GOFLAGS: '-mod=mod -buildvcs=false' },
  });
  if (built.code !== 0) throw new Error(`go build of scripts/compose-check failed:\n${built.stderr}`);
}, 600_000);

afterAll(() => {
  if (workDir) rmSync(workDir, { recursive: true, force: true });
});

const MARE_SERVICES = ['setup', 'worker', 'deployment', 'codec-server', 'api'];

test('docker-compose.yml loads: schema, interpolation and consistency checks pass', async () => {
  const project = await load();
  expect(project.name).toBe('mare');
  expect(Object.keys(project.services).sort()).toEqual(
    ['codec-server', 'deployment', 'postgresql', 'setup', 'temporal', 'temporal-namespace', 'temporal-schema', 'temporal-ui', 'worker'].sort(),
  );
  // The HTTP API is behind a profile, so it does not need MARE_API_KEY unless asked for.
  const withApi = await load(['api']);
  expect(withApi.services.api).toBeDefined();
});

test('PostgreSQL keeps its data in a named volume and reports healthy only when it accepts connections', async () => {
  const { services, volumes } = await load();
  const pg = services.postgresql!;
  expect(pg.image).toMatch(/^postgres:/);
  expect(pg.environment?.POSTGRES_DB).toBe('mare');
  expect(pg.volumes).toEqual([expect.objectContaining({ type: 'volume', source: 'postgres-data', target: '/var/lib/postgresql/data' })]);
  expect(Object.keys(volumes ?? {})).toContain('postgres-data');
  expect(pg.healthcheck?.test?.join(' ')).toContain('pg_isready');
  expect(pg.ports).toBeUndefined();
});

test('a one-shot admin-tools service sets up the temporal and temporal_visibility schemas before the server starts', async () => {
  const { services } = await load();
  const schema = services['temporal-schema']!;
  expect(schema.image).toMatch(/^temporalio\/admin-tools:/);
  expect(schema.restart).toBe('no');
  expect(schema.depends_on?.postgresql?.condition).toBe('service_healthy');
  expect(schema.environment).toMatchObject({ SQL_PLUGIN: 'postgres12', SQL_HOST: 'postgresql', SQL_PORT: '5432' });
  expect(schema.environment?.SQL_USER).toBe(services.postgresql!.environment?.POSTGRES_USER);
  expect(schema.environment?.SQL_PASSWORD).toBe(services.postgresql!.environment?.POSTGRES_PASSWORD);
  const script = [...(schema.entrypoint ?? []), ...(schema.command ?? [])].join('\n');
  expect(script).toMatch(/for db in temporal temporal_visibility;/);
  for (const step of ['create', 'setup-schema -v 0.0', 'update-schema -d']) expect(script).toContain(`temporal-sql-tool --db "$db" ${step}`);
  expect(script).toContain('/etc/temporal/schema/postgresql/v12/$dir/versioned');
  expect(script).toMatch(/then dir=temporal; else dir=visibility;/);
});

test('the Temporal server uses PostgreSQL persistence and starts after the schema setup', async () => {
  const { services, configs } = await load();
  const temporal = services.temporal!;
  expect(temporal.image).toMatch(/^temporalio\/server:/);
  // The admin tools and the server come from the same release.
  expect(temporal.image!.split(':')[1]).toBe(services['temporal-schema']!.image!.split(':')[1]);
  expect(temporal.environment).toMatchObject({
    DB: 'postgres12',
    DB_PORT: '5432',
    POSTGRES_SEEDS: 'postgresql',
    DBNAME: 'temporal',
    VISIBILITY_DBNAME: 'temporal_visibility',
    BIND_ON_IP: '0.0.0.0',
  });
  expect(temporal.environment?.POSTGRES_PWD).toBe(services.postgresql!.environment?.POSTGRES_PASSWORD);
  expect(temporal.depends_on).toMatchObject({
    postgresql: { condition: 'service_healthy' },
    'temporal-schema': { condition: 'service_completed_successfully' },
  });
  // The dynamic config file the server reads is the inline config mounted there.
  const mount = temporal.configs?.find((c) => c.source === 'temporal-dynamic-config');
  expect(mount?.target).toBe(temporal.environment?.DYNAMIC_CONFIG_FILE_PATH);
  expect(configs?.['temporal-dynamic-config']?.content).toContain('limit.maxIDLength');
  expect(temporal.healthcheck?.test).toBeDefined();

  const ns = services['temporal-namespace']!;
  expect(ns.image).toMatch(/^temporalio\/admin-tools:/);
  expect(ns.depends_on?.temporal?.condition).toBe('service_healthy');
  expect(ns.environment?.TEMPORAL_ADDRESS).toBe('temporal:7233');
  expect((ns.command ?? []).join('\n')).toContain('temporal operator namespace create -n "$NAMESPACE"');
});

test('every MARE service runs the image built from the repository Dockerfile, with its own command', async () => {
  const { services } = await load(['api']);
  const images = new Set<string | undefined>();
  for (const name of MARE_SERVICES) {
    const svc = services[name]!;
    expect(svc.build?.context).toBe(ROOT);
    expect(svc.build?.dockerfile ?? 'Dockerfile').toBe('Dockerfile');
    images.add(svc.image);
    expect(svc.entrypoint ?? null).toBeNull(); // the image's: node /app/dist/cli/mare.js
  }
  expect(images.size).toBe(1);
  expect(services.setup!.command).toEqual(['setup']);
  expect(services.worker!.command).toEqual(['worker']);
  expect(services.deployment!.command).toEqual(['deployment', 'set-current']);
  expect(services.deployment!.environment).toMatchObject({ MARE_DEPLOYMENT_NAME: 'mare', MARE_BUILD_ID: 'dev' });
  expect(services['codec-server']!.command).toEqual(['codec-server']);
  expect(services.api!.command).toEqual(['api', '--host', '0.0.0.0', '--port', '3000']);

  const dockerfile = readFileSync(path.join(ROOT, 'Dockerfile'), 'utf8');
  expect(dockerfile).toMatch(/^FROM node:22\S* AS build$/m);
  expect(dockerfile).toMatch(/npm ci\b/);
  expect(dockerfile).toContain('npm run build');
  expect(dockerfile).toContain(`node dist/cli/mare.js bundle ${services.worker!.environment?.MARE_WORKFLOW_BUNDLE}`);
  expect(dockerfile).toContain('ENTRYPOINT ["node", "/app/dist/cli/mare.js"]');
});

test('setup registers the search attributes once the namespace exists, and the workers wait for it', async () => {
  const { services } = await load();
  const setup = services.setup!;
  expect(setup.restart).toBe('no');
  expect(setup.depends_on?.['temporal-namespace']?.condition).toBe('service_completed_successfully');
  expect(setup.environment).toMatchObject({ TEMPORAL_ADDRESS: 'temporal:7233', TEMPORAL_NAMESPACE: 'default' });
  expect(services.worker!.depends_on?.setup?.condition).toBe('service_completed_successfully');
});

test('the worker scales with deploy.replicas: no container name, no host ports', async () => {
  const { services, volumes } = await load();
  const worker = services.worker!;
  expect(worker.deploy?.replicas).toBeGreaterThanOrEqual(1);
  expect(worker.container_name).toBeUndefined();
  expect(worker.ports).toBeUndefined();
  expect(worker.depends_on?.postgresql?.condition).toBe('service_healthy');

  const env = worker.environment ?? {};
  const db = new URL(env.DATABASE_URL ?? '');
  expect([db.protocol, db.hostname, db.port, db.pathname]).toEqual(['postgres:', 'postgresql', '5432', '/mare']);
  expect(db.username).toBe(services.postgresql!.environment?.POSTGRES_USER);
  expect(env).toMatchObject({
    TEMPORAL_ADDRESS: 'temporal:7233',
    TEMPORAL_NAMESPACE: 'default',
    MARE_WORKFLOW_BUNDLE: '/app/dist/workflow-bundle.js',
    MARE_ROLE_KEYS: SECRETS.MARE_ROLE_KEYS,
    MARE_PAYLOAD_KEYS: SECRETS.MARE_PAYLOAD_KEYS,
    MARE_HEALTH_BIND: '0.0.0.0:9090',
    MARE_METRICS_BIND: '0.0.0.0:9464',
    MARE_DEPLOYMENT_NAME: 'mare',
    MARE_BUILD_ID: 'dev',
  });
  // Model settings pass through from the host when set; none is baked into the file.
  for (const name of ['MARE_MODEL', 'OPENAI_API_KEY', 'ANTHROPIC_API_KEY', 'MARE_OPENAI_COMPATIBLE_URL', 'MARE_ROLE_ACTIVE_KEY', 'MARE_PAYLOAD_ACTIVE_KEY']) {
    expect(env[name]).toBeNull();
  }
  // The healthcheck asks the worker's own readiness endpoint.
  expect(worker.healthcheck?.test?.join(' ')).toContain('http://127.0.0.1:9090/readyz');
  // All replicas share the task workspaces.
  expect(worker.volumes).toEqual([expect.objectContaining({ type: 'volume', source: 'mare-workspaces', target: env.MARE_WORKSPACE_DIR })]);
  expect(Object.keys(volumes ?? {})).toContain('mare-workspaces');
});

test('the Web UI decodes payloads through the codec server, which the browser reaches on a published port', async () => {
  const { services } = await load();
  const ui = services['temporal-ui']!;
  const codec = services['codec-server']!;
  expect(ui.image).toMatch(/^temporalio\/ui:/);
  expect(ui.environment?.TEMPORAL_ADDRESS).toBe('temporal:7233');

  const codecPort = codec.ports?.find((p) => p.target === 8888);
  expect(codec.healthcheck?.test?.join(' ')).toContain('http://127.0.0.1:8888/healthz');
  expect(codec.environment).toMatchObject({ MARE_CODEC_BIND: '0.0.0.0:8888', MARE_CODEC_TOKEN: SECRETS.MARE_CODEC_TOKEN, MARE_PAYLOAD_KEYS: SECRETS.MARE_PAYLOAD_KEYS });
  expect(ui.environment?.TEMPORAL_CODEC_ENDPOINT).toBe(`http://localhost:${codecPort?.published}/token/${SECRETS.MARE_CODEC_TOKEN}`);

  // The codec server lets in the UI's origin, as the browser sees it.
  const uiPort = ui.ports?.find((p) => p.target === 8080);
  expect(codec.environment?.MARE_CODEC_CORS_ORIGIN).toBe(`http://localhost:${uiPort?.published}`);
  expect(ui.depends_on).toMatchObject({ temporal: { condition: 'service_healthy' }, 'codec-server': { condition: 'service_healthy' } });
});

test('every depends_on target exists, and no two services publish the same host port', async () => {
  const { services } = await load(['api']);
  const published: string[] = [];
  for (const [name, svc] of Object.entries(services)) {
    for (const target of Object.keys(svc.depends_on ?? {})) expect([name, target, target in services]).toEqual([name, target, true]);
    for (const p of svc.ports ?? []) published.push(`${p.host_ip ?? '0.0.0.0'}:${p.published}`);
  }
  expect(new Set(published).size).toBe(published.length);
  expect(services.api!.environment).toHaveProperty('MARE_API_KEY');
});

test('the required secrets are required: without them the file is rejected, naming each', async () => {
  const res = await check(COMPOSE_FILE, {});
  expect(res.code).not.toBe(0);
  for (const name of Object.keys(SECRETS)) expect(res.stderr).toContain(`required variable ${name} is missing a value`);
});

test('the parser rejects broken copies of the file', async () => {
  // Control: the unmodified file, from the temp dir too, passes.
  expect((await check(brokenCopy('unchanged', (y) => `${y}\n`))).code).toBe(0);

  const unknownKey = await check(brokenCopy('unknown-key', addToWorker('    replica: 3\n')));
  expect(unknownKey.code).not.toBe(0);
  expect(unknownKey.stderr).toContain('services.worker.replica');

  const fixedName = await check(brokenCopy('container-name', addToWorker('    container_name: mare-worker\n')));
  expect(fixedName.code).not.toBe(0);
  // (compose-go 2.16.2 swaps the service name and the attribute in this message.)
  expect(fixedName.stderr).toMatch(/can't set container_name and .*container name must be unique/);

  const missingDep = await check(
    brokenCopy('missing-dependency', (y) => y.replace(/^( {4}depends_on:\n)( {6}postgresql:\n {8}condition: service_healthy\n {6}setup:)/m, '$1      redis:\n        condition: service_started\n$2')),
  );
  expect(missingDep.code).not.toBe(0);
  expect(missingDep.stderr).toContain('depends on undefined service "redis"');
});
