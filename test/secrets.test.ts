import { createRedactor, detectSensitivity, REDACTED, Redactor, SecretsConfigError } from '../infra/secrets';
import { createLogger } from '../workers/logger';

// A planted canary: it must never survive redaction anywhere.
const CANARY = 'mare-canary-7f3a9c2e1b5d4f60a8';
const env = { MARE_CANARY_API_KEY: CANARY, HOME: '/home/mare', MARE_LOG_LEVEL: 'info' };

// Secret-shaped fixtures are assembled at run time so no token-looking literal sits in the source.
const OPENAI = `sk-proj-${'A1b2C3d4E5'.repeat(3)}`;
const ANTHROPIC = `sk-ant-api03-${'z9Y8x7W6v5'.repeat(4)}`;
const AWS = 'AKIA' + 'IOSFODNN7EXAMPLE';
const GITHUB = `ghp_${'a1B2c3D4e5F6'.repeat(3)}`;
const JWT = ['eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9', 'eyJzdWIiOiIxMjM0NTY3ODkwIn0', 'dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U'].join('.');
const PEM = ['-----BEGIN RSA PRIVATE KEY-----', 'MIIEpAIBAAKCAQEA3Tz2mr7SZiAMfQyuvBjM2', 'Oi9yVS0lQ2VycnlGbWlsZQ==', '-----END RSA PRIVATE KEY-----'].join('\n');

describe('Redactor', () => {
  const r = createRedactor({}, env);

  test('a canary in an env var named like an API key is redacted from text', () => {
    expect(r.redact(`calling the provider with ${CANARY} now`)).toBe(`calling the provider with ${REDACTED} now`);
    expect(r.redact(`${CANARY}${CANARY}`)).toBe(REDACTED);
    expect(r.containsSecret(`x ${CANARY} y`)).toBe(true);
    expect(r.containsSecret('nothing to see here')).toBe(false);
    // Untouched text comes back as the same string.
    const plain = 'a plain line about /home/mare';
    expect(r.redact(plain)).toBe(plain);
  });

  test('redactDeep: nested objects, arrays, Maps, Sets, keys kept, cycles safe, input untouched', () => {
    const input: Record<string, unknown> = {
      task: 't-1',
      args: { headers: [{ name: 'x-key', value: `k=${CANARY}` }], count: 3, ok: true, when: new Date(0) },
      map: new Map([['k', CANARY]]),
      set: new Set([CANARY, 'fine']),
    };
    input.self = input;
    const out = r.redactDeep(input);
    expect(JSON.stringify({ ...out, self: undefined, map: [...(out.map as Map<string, string>)], set: [...(out.set as Set<string>)] })).not.toContain(CANARY);
    expect((out.args as { headers: Array<{ value: string }> }).headers[0]!.value).toBe(`k=${REDACTED}`);
    expect((out.args as { count: number }).count).toBe(3);
    expect((out.args as { when: Date }).when).toBeInstanceOf(Date);
    expect((out.map as Map<string, string>).get('k')).toBe(REDACTED);
    expect([...(out.set as Set<string>)]).toEqual([REDACTED, 'fine']);
    expect(out.self).toBe(out);
    expect(Object.keys(out)).toEqual(Object.keys(input));
    expect((input.args as { headers: Array<{ value: string }> }).headers[0]!.value).toContain(CANARY);
  });

  test('redactDeep: an Error becomes its redacted log shape (message, stack, fields, cause)', () => {
    class ProviderError extends Error {
      override readonly name = 'ProviderError';
      constructor(message: string, readonly detail: string, options?: { cause?: unknown }) {
        super(message, options);
      }
    }
    const err = new ProviderError(`auth failed for ${CANARY}`, `key ${CANARY}`, { cause: new Error(`inner ${CANARY}`) });
    const shape = r.redactDeep(err) as unknown as Record<string, unknown>;
    expect(shape).not.toBeInstanceOf(Error);
    expect(shape.type).toBe('ProviderError');
    expect(shape.message).toBe(`auth failed for ${REDACTED}`);
    expect(shape.stack).toContain(`auth failed for ${REDACTED}`);
    expect(shape.detail).toBe(`key ${REDACTED}`);
    expect((shape.cause as { message: string }).message).toBe(`inner ${REDACTED}`);
    expect(JSON.stringify(shape)).not.toContain(CANARY);
    // A self-referencing cause does not loop.
    const loop = new Error(CANARY);
    (loop as { cause?: unknown }).cause = loop;
    const loopShape = r.redactDeep(loop) as unknown as Record<string, unknown>;
    expect(loopShape.cause).toBe(loopShape);
  });

  test('redactDeep: Buffers holding a secret are re-encoded, others returned as they are', () => {
    const buf = Buffer.from(`token=${CANARY};`);
    const out = r.redactDeep(buf);
    expect(Buffer.isBuffer(out)).toBe(true);
    expect(out.toString()).toBe(`token=${REDACTED};`);
    const binary = Buffer.from([0xff, 0x00, 0xfe, ...Buffer.from(CANARY), 0x80]);
    const outBinary = r.redactDeep(binary);
    expect(outBinary.includes(Buffer.from(CANARY))).toBe(false);
    expect([...outBinary.subarray(0, 3)]).toEqual([0xff, 0x00, 0xfe]);
    const clean = Buffer.from('nothing');
    expect(r.redactDeep(clean)).toBe(clean);
  });

  test('redactDeep: string values of secret-named fields are redacted whatever they hold', () => {
    const out = r.redactDeep({ user: 'bob', password: 'hunter2', apiKey: 'x', client_secret: 'abc', Authorization: 'Basic Ym9iOmh1bnRlcjI=', key: 'idem-1', maxTokens: 100 });
    expect(out).toEqual({ user: 'bob', password: REDACTED, apiKey: REDACTED, client_secret: REDACTED, Authorization: REDACTED, key: 'idem-1', maxTokens: 100 });
    expect(r.redactDeep({ password: '' })).toEqual({ password: '' });
  });

  test('redactDeep: values with toJSON are redacted as they would be serialised', () => {
    const out = r.redactDeep({ url: new URL('https://user:hunter2-pass@example.com/x'), custom: { toJSON: () => ({ inner: CANARY }) } });
    expect(out).toEqual({ url: `https://user:${REDACTED}@example.com/x`, custom: { inner: REDACTED } });
  });

  test('URL passwords: in any text, and known from the environment in any form', () => {
    expect(r.redact('connecting to postgres://mare:s3cr3t-pw@db.example.com:5432/mare')).toBe(`connecting to postgres://mare:${REDACTED}@db.example.com:5432/mare`);
    expect(r.redact('redis://:pw@cache:6379 and https://host:8443/path and ssh://git@github.com')).toBe(`redis://:${REDACTED}@cache:6379 and https://host:8443/path and ssh://git@github.com`);
    expect(r.redact('"url":"amqp://u:p@ss-w0rd@mq/vhost"')).toBe(`"url":"amqp://u:${REDACTED}@mq/vhost"`);
    const fromEnv = createRedactor({}, { DATABASE_URL: 'postgres://mare:pa%40ss-word-1@db:5432/mare' });
    expect(fromEnv.redact('password pa%40ss-word-1 leaked')).toBe(`password ${REDACTED} leaked`);
    expect(fromEnv.redact('decoded pa@ss-word-1 leaked')).toBe(`decoded ${REDACTED} leaked`);
  });

  test.each([
    ['OpenAI key', OPENAI],
    ['Anthropic key', ANTHROPIC],
    ['AWS access key id', AWS],
    ['GitHub token', GITHUB],
    ['GitHub fine-grained token', `github_pat_${'11ABCDEFG0'.repeat(4)}`],
    ['JWT', JWT],
    ['PEM private key block', PEM],
  ])('built-in shape: %s', (_label, secret) => {
    const bare = createRedactor({}, {});
    expect(bare.redact(`before ${secret} after`)).toBe(`before ${REDACTED} after`);
    expect(bare.containsSecret(secret)).toBe(true);
  });

  test('built-in shapes: bearer tokens keep the scheme; look-alikes stay', () => {
    const bare = createRedactor({}, {});
    expect(bare.redact('Authorization: Bearer abc123def456ghi789')).toBe(`Authorization: Bearer ${REDACTED}`);
    expect(bare.redact('authorization: bearer abc123def456ghi789==')).toBe(`authorization: bearer ${REDACTED}`);
    expect(bare.redact('a truncated -----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBg')).toBe(`a truncated ${REDACTED}`);
    for (const text of ['use Bearer authentication', 'the task-abcdefghijklmnopqrstuvwxyz', 'AKIA123', 'ghp_short', 'eyJhbGciOi alone', 'https://example.com:8080/x@y']) {
      expect(bare.redact(text)).toBe(text);
    }
  });

  test('configured patterns are redacted; an invalid one is a SecretsConfigError naming it', () => {
    const configured = createRedactor({ patterns: ['ACME-[0-9]{6}', String.raw`(["'])internal-\w+\1`] }, {});
    expect(configured.redact('ticket ACME-123456 ok')).toBe(`ticket ${REDACTED} ok`);
    expect(configured.redact(`a 'internal-abc' b "internal-def' c`)).toBe(`a ${REDACTED} b "internal-def' c`);
    expect(configured.redact('ACME-12345')).toBe('ACME-12345');
    expect(() => createRedactor({ patterns: ['ok', '(unclosed'] }, {})).toThrow(SecretsConfigError);
    expect(() => createRedactor({ patterns: ['(unclosed'] }, {})).toThrow(/\(unclosed/);
    expect(() => createRedactor({ patterns: ['a*'] }, {})).toThrow(SecretsConfigError);
    try {
      createRedactor({ patterns: ['[z-a]'] }, {});
      throw new Error('expected a SecretsConfigError');
    } catch (err) {
      expect(err).toBeInstanceOf(SecretsConfigError);
      expect((err as SecretsConfigError).pattern).toBe('[z-a]');
    }
  });

  test('short values, flags, numbers and non-secret names are not redacted; config.env adds names', () => {
    const r2 = createRedactor(
      { env: ['MARE_UPSTREAM'] },
      {
        SHORT_TOKEN: 'abc123',
        MARE_GREETING: 'hello-world-value',
        MAX_TOKENS: '100000000',
        FEATURE_SECRET: 'undefined',
        MARE_ROLE_ACTIVE_KEY: 'k-2024-main-key',
        MARE_ROLE_KEY_FILE: '/home/mare/.mare/role-keys.json',
        KEYCLOAK_REALM: 'production-realm',
        PWD: '/work/main/project',
        MARE_UPSTREAM: 'upstream-creds-42',
      },
    );
    for (const text of ['abc123', 'hello-world-value', '100000000', 'undefined', 'k-2024-main-key', '/home/mare/.mare/role-keys.json', 'production-realm', '/work/main/project']) {
      expect(r2.redact(`v=${text}`)).toBe(`v=${text}`);
    }
    expect(r2.redact('using upstream-creds-42')).toBe(`using ${REDACTED}`);
  });

  test('list-valued key material (MARE_ROLE_KEYS): each key is a secret, key ids are not', () => {
    const a = Buffer.alloc(32, 7).toString('base64');
    const b = Buffer.alloc(32, 9).toString('base64');
    const r2 = createRedactor({}, { MARE_ROLE_KEYS: `k1:${a}, k2:${b}` });
    expect(r2.redact(`loaded ${b} as k2`)).toBe(`loaded ${REDACTED} as k2`);
    expect(r2.redact(`keys k1:${a}`)).toBe(`keys k1:${REDACTED}`);
  });

  test('overlapping known values are removed entirely', () => {
    const r2 = createRedactor({}, { A_SECRET: 'abcdefgh12', B_SECRET: 'efgh12345678', C_TOKEN: 'longsecret-value', D_TOKEN: 'longsecret-value-extended' });
    expect(r2.redact('xxabcdefgh12345678yy')).toBe(`xx${REDACTED}yy`);
    expect(r2.redact('a longsecret-value-extended b longsecret-value c')).toBe(`a ${REDACTED} b ${REDACTED} c`);
    expect(new Redactor(['a.b*c(d)e']).redact('x a.b*c(d)e y aXbbc(d)e')).toBe(`x ${REDACTED} y aXbbc(d)e`);
  });
});

describe('detectSensitivity', () => {
  const r = createRedactor({}, env);

  test('secrets anywhere in a value, including secret-named fields and Error messages', () => {
    expect(detectSensitivity({ args: [{ note: `use ${CANARY}` }] }, r)).toEqual(['secret']);
    expect(detectSensitivity({ cmd: `curl -H 'Authorization: Bearer abc123def456ghi789'` }, r)).toEqual(['secret']);
    expect(detectSensitivity({ login: { password: 'hunter2' } }, r)).toEqual(['secret']);
    expect(detectSensitivity(new Error(`failed: ${OPENAI}`), r)).toEqual(['secret']);
    expect(detectSensitivity({ path: 'notes.txt', content: 'hello', n: 42 }, r)).toEqual([]);
  });

  test.each([
    ['e-mail', 'write to alice.smith+mare@example.co.uk today'],
    ['card (spaces)', 'card 4111 1111 1111 1111 exp 12/30'],
    ['card (dashes)', 'card 5555-5555-5555-4444'],
    ['card (Amex, bare)', '378282246310005'],
    ['US SSN', 'ssn: 123-45-6789'],
    ['IBAN (grouped)', 'pay DE89 3704 0044 0532 0130 00 by Friday'],
    ['IBAN (compact)', 'GB82WEST12345698765432'],
    ['IBAN (then capitals)', 'IBAN GB82 WEST 1234 5698 7654 32 REF INV'],
    ['phone', 'call +1 (415) 555-2671'],
    ['phone (compact)', '+442071838750'],
  ])('pii: %s', (_label, text) => {
    expect(detectSensitivity({ text }, r)).toEqual(['pii']);
  });

  test('pii: numbers and object keys are scanned too', () => {
    expect(detectSensitivity({ card: 4111111111111111 }, r)).toEqual(['pii']);
    expect(detectSensitivity({ 'bob@example.com': { role: 'admin' } }, r)).toEqual(['pii']);
  });

  test.each([
    ['Luhn-invalid card', '4111 1111 1111 1112'],
    ['millisecond timestamp', '1712345678901'],
    ['plain numbers', 'total 42, id 12345, 3.14159, 2024-01-15'],
    ['invalid IBAN checksum', 'DE89 3704 0044 0532 0130 01'],
    ['IBAN of the wrong length', 'DE89370400440532013'],
    ['invalid SSN area', '000-12-3456 and 666-12-3456 and 923-45-6789'],
    ['number without +', 'call 415 555 2671'],
    ['too short for a phone', '+49 301'],
    ['too long for a phone', '+1234567890123456789'],
    ['URL user, not an address', 'ssh://git@github.com:org/repo.git'],
    ['no domain', 'mention @alice and user@localhost'],
    ['a UUID', '3f2504e0-4f89-41d3-9a0c-0305e82c3301'],
  ])('not pii: %s', (_label, text) => {
    expect(detectSensitivity({ text }, createRedactor({}, {}))).toEqual([]);
  });

  test('both kinds, sorted and unique; cycles are safe', () => {
    const v: Record<string, unknown> = { a: `key ${CANARY}`, b: 'alice@example.com', c: ['bob@example.com', CANARY] };
    v.self = v;
    expect(detectSensitivity(v, r)).toEqual(['pii', 'secret']);
  });

  test('without a redactor it reads the process environment', () => {
    process.env.MARE_CANARY_TOKEN = CANARY;
    try {
      expect(detectSensitivity(`x ${CANARY}`)).toEqual(['secret']);
    } finally {
      delete process.env.MARE_CANARY_TOKEN;
    }
  });
});

interface LogLine {
  msg?: string;
  binding?: string;
  request?: { headers: Record<string, string> };
  err?: { type: string; message: string; stack: string };
}

describe('logger redaction', () => {
  function memoryLogger(redactor?: Redactor): { logger: ReturnType<typeof createLogger>; output: () => string } {
    const lines: string[] = [];
    const logger = createLogger('mare-test', { redactor, destination: { write: (s: string) => void lines.push(s) } });
    return { logger, output: () => lines.join('') };
  }

  test('the canary never reaches a log line: message, nested field, { err }, bare Error, arguments, bindings', () => {
    const { logger, output } = memoryLogger(createRedactor({}, env));
    logger.info(`calling with ${CANARY}`);
    logger.info({ request: { headers: { 'x-api-key': CANARY }, list: [`a ${CANARY}`] } }, 'nested');
    logger.error({ err: new Error(`upstream rejected ${CANARY}`) }, 'failed');
    logger.error({ err: new Error(`no message given ${CANARY}`) });
    logger.warn(new Error(`bare ${CANARY}`));
    logger.info('interpolated %s and %o', CANARY, { k: CANARY });
    logger.child({ binding: CANARY }).info('from a child');
    const text = output();
    expect(text).not.toContain(CANARY);
    expect(text).toContain(REDACTED);
    const lines = text.trim().split('\n').map((l) => JSON.parse(l) as LogLine);
    expect(lines).toHaveLength(7);
    expect(lines[0]!.msg).toBe(`calling with ${REDACTED}`);
    expect(lines[1]!.request!.headers['x-api-key']).toBe(REDACTED);
    expect(lines[2]!.err).toMatchObject({ type: 'Error', message: `upstream rejected ${REDACTED}` });
    expect(lines[2]!.err!.stack).toContain(`upstream rejected ${REDACTED}`);
    expect(lines[3]!.msg).toBe(`no message given ${REDACTED}`);
    expect(lines[4]!).toMatchObject({ msg: `bare ${REDACTED}`, err: { message: `bare ${REDACTED}` } });
    expect(lines[6]!.binding).toBe(REDACTED);
  });

  test('the default redactor reads the process environment; the old signature still works', () => {
    process.env.MARE_CANARY_API_KEY = CANARY;
    try {
      const { logger, output } = memoryLogger();
      logger.info({ detail: CANARY }, `msg ${CANARY}`);
      expect(output()).not.toContain(CANARY);
      expect(output()).toContain(REDACTED);
      expect(typeof createLogger('mare-worker').info).toBe('function');
    } finally {
      delete process.env.MARE_CANARY_API_KEY;
    }
  });
});

test('pretty logs (mare dev on a terminal) are human-readable lines and redacted too', async () => {
  const canary = 'canary-pretty-0123456789abcdef';
  const redactor = createRedactor({}, { MARE_CANARY_API_KEY: canary });
  const { Writable } = await import('node:stream');
  let out = '';
  const destination = new Writable({
    write(chunk: Buffer, _enc, done) {
      out += chunk.toString();
      done();
    },
  });
  const logger = createLogger('mare-dev', { redactor, pretty: true, destination });
  logger.info({ key: canary }, `worker started with ${canary}`);
  logger.flush();
  await new Promise((r) => setTimeout(r, 50));
  expect(out).toMatch(/INFO.*\(mare-dev\): worker started with \[REDACTED\]/);
  expect(out).not.toContain(canary);
  expect(out.trim().startsWith('{')).toBe(false);
});
