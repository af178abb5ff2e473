/**
 * Secrets redaction and data-sensitivity detection.
 *
 * A `Redactor` knows three kinds of secret:
 *  - known values: the values of environment variables whose name says they are secret (API keys,
 *    tokens, passwords, key material such as MARE_ROLE_KEYS) or that `SecretsConfig.env` lists, and
 *    the passwords of `scheme://user:password@host` URLs found in any environment variable
 *    (DATABASE_URL);
 *  - built-in shapes: OpenAI and Anthropic keys, AWS access key ids, GitHub tokens, PEM private key
 *    blocks, bearer tokens, JWTs, and the password part of any URL with credentials;
 *  - configured patterns (`SecretsConfig.patterns`, JavaScript regular-expression sources).
 * Known values are also found hex-encoded (any case) and base64/base64url-encoded (every byte
 * alignment), line breaks allowed, so a command cannot print a secret past redaction by encoding
 * it. Every occurrence becomes `[REDACTED]`. One combined RegExp is built once per redactor.
 */

/** What a redactor treats as secret beyond the built-in rules. */
export interface SecretsConfig {
  /** Extra regular expressions (JavaScript source strings, compiled without flags). */
  patterns?: string[];
  /** Extra environment variable NAMES whose values are secret, whatever the name looks like. */
  env?: string[];
}

/** A configured pattern that is not a usable regular expression. */
export class SecretsConfigError extends Error {
  override readonly name = 'SecretsConfigError';
  constructor(readonly pattern: string, detail: string) {
    super(`secret pattern ${JSON.stringify(pattern)} is not usable: ${detail}`);
  }
}

/** What replaces every secret occurrence. */
export const REDACTED = '[REDACTED]';

/** A kind of sensitive data found in a value. */
export type Sensitivity = 'secret' | 'pii';

/** Known values shorter than this are ignored: redacting them everywhere would mangle ordinary text. */
const MIN_SECRET_LENGTH = 8;
/** Pieces of a list-valued secret (`id:key, id:key`) are secret on their own only from this length. */
const MIN_PIECE_LENGTH = 16;

const SECRET_ENV_NAME = /(^|_)(API_?KEYS?|KEYS?|SECRETS?|TOKENS?|PASSWORDS?|PASSWD|CREDENTIALS?|PRIVATE_KEYS?)($|_)/i;
// Names that merely point at or identify a secret (a key id, a key file, an endpoint) hold no secret.
const NOT_SECRET_ENV_NAME = /_(IDS?|FILE|PATH|DIR|NAME|TYPE|URL|HOST|PORT|ACTIVE_KEY)$/i;
// Values that cannot be secrets: flags and numbers (MAX_TOKENS=100000). Paths are kept: base64 may start with '/'.
const NOT_SECRET_VALUE = /^(?:true|false|yes|no|on|off|null|undefined|[+-]?\d+(?:\.\d+)?)$/i;

// Built-in secret shapes; each must be a valid alternative of one combined RegExp with the 'g' flag only.
const URL_PASSWORD = String.raw`(?<=\b[A-Za-z][A-Za-z0-9+.-]*:\/\/[^\s:@\/?#"'<>\\]*:)[^\s\/?#"'<>\\]+(?=@)`;
const BUILT_IN_SHAPES: readonly string[] = [
  // PEM private keys; a block cut off before its END line is redacted up to the end of the text or the
  // next double quote (no built-in shape crosses a quote, so a JSON log line stays valid JSON).
  String.raw`-----BEGIN[A-Z0-9 ]*PRIVATE KEY-----(?:[^"]*?-----END[A-Z0-9 ]*PRIVATE KEY-----|[^"]*)`,
  String.raw`\bsk-ant-[A-Za-z0-9_-]{20,}`,
  String.raw`\bsk-[A-Za-z0-9_-]{20,}`,
  String.raw`\b(?:AKIA|ASIA)[0-9A-Z]{16}\b`,
  String.raw`\bgh[pousr]_[A-Za-z0-9]{36,}`,
  String.raw`\bgithub_pat_[A-Za-z0-9_]{22,}`,
  // Only the token after "Bearer"; it must contain a digit so that prose ("Bearer authentication") stays.
  String.raw`(?<=\b(?:[Bb]earer|BEARER)[ \t]{1,4})(?=[A-Za-z0-9._~+\/-]*\d)[A-Za-z0-9._~+\/-]{8,}=*`,
  String.raw`\beyJ[A-Za-z0-9_-]{2,}\.eyJ[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]*`,
  URL_PASSWORD,
];

// Object keys whose string values are secret whatever they look like ({ password: 'hunter2' }).
const SECRET_FIELD_EXACT = new Set(['token', 'secret', 'password', 'passwd', 'pwd', 'passphrase', 'authorization', 'cookie', 'credential', 'credentials']);
const SECRET_FIELD_SUFFIXES = [
  'password', 'passwd', 'passphrase', 'secret', 'apikey', 'accesstoken', 'refreshtoken', 'authtoken', 'sessiontoken',
  'bearertoken', 'idtoken', 'privatekey', 'secretkey', 'signingkey',
];

/** Whether an object key names a secret field (password, apiKey, client_secret, Authorization, ...). */
function isSecretField(key: string): boolean {
  const k = key.toLowerCase().replace(/[^a-z0-9]/g, '');
  return SECRET_FIELD_EXACT.has(k) || SECRET_FIELD_SUFFIXES.some((s) => k.endsWith(s));
}

const escapeRegExp = (s: string): string => s.replace(/[.*+?^${}()|[\]\\/-]/g, '\\$&');

// Backreferences and named groups change meaning (or clash) inside one combined RegExp.
const NOT_COMBINABLE = /\\[1-9]|\\k<|\(\?<(?![=!])/;

// Encoded output may be wrapped (`base64` breaks lines at 76 characters, `xxd -p` at 60).
const LINE_BREAK = String.raw`(?:\r?\n)?`;

/** A pattern for hex digits in either case (mixed case too), a line break allowed between any two. */
function hexPattern(hex: string): string {
  return [...hex].map((ch) => (/[a-f]/.test(ch) ? `[${ch}${ch.toUpperCase()}]` : ch)).join(LINE_BREAK);
}

/**
 * Patterns for a known secret value as a command could print it encoded: hex (any case) and
 * base64 / base64url. The base64 of the value inside a longer stream depends on its byte offset
 * mod 3: for each of the three alignments the characters that encode only the value's own bytes
 * (the stable middle, skipping 0, 2 or 1 leading bytes and the trailing partial group) are
 * matched. The one or two characters at each edge, which mix in neighbouring bytes, stay.
 */
function encodedForms(value: string): string[] {
  const bytes = Buffer.from(value, 'utf8');
  const out = [hexPattern(bytes.toString('hex'))];
  for (const skip of [0, 1, 2]) {
    const whole = Math.floor((bytes.length - skip) / 3) * 3;
    // Fewer than 6 bytes (8 characters) is too short to redact everywhere without mangling text.
    if (whole < 6) continue;
    const b64 = bytes.subarray(skip, skip + whole).toString('base64');
    for (const form of new Set([b64, b64.replace(/\+/g, '-').replace(/\//g, '_')])) out.push([...form].map(escapeRegExp).join(LINE_BREAK));
  }
  return out;
}

/** Redacts known secret values, built-in secret shapes and configured patterns. Build with `createRedactor`. */
export class Redactor {
  private readonly combined: RegExp;
  private readonly separate: RegExp[];

  /**
   * @param knownValues literal secret values (any length; `createRedactor` filters short ones)
   * @param patterns extra regular-expression sources; throws SecretsConfigError for an unusable one
   */
  constructor(knownValues: Iterable<string>, patterns: readonly string[] = []) {
    const combinable: string[] = [];
    this.separate = [];
    for (const pattern of patterns) {
      let compiled: RegExp;
      try {
        compiled = new RegExp(pattern, 'g');
      } catch (err) {
        throw new SecretsConfigError(pattern, err instanceof Error ? err.message : String(err));
      }
      if (new RegExp(`^(?:${pattern})$`).test('')) throw new SecretsConfigError(pattern, 'it matches the empty string');
      if (NOT_COMBINABLE.test(pattern)) this.separate.push(compiled);
      else combinable.push(pattern);
    }
    // Longest values first: at one position the longest known value wins.
    const values = [...new Set([...knownValues].filter((v) => v.length > 0))].sort((a, b) => b.length - a.length);
    // Encoded forms first: they are longer than the value, and a value could sit inside its own hex.
    const encoded = [...new Set(values.flatMap(encodedForms))];
    this.combined = new RegExp([...BUILT_IN_SHAPES, ...combinable, ...encoded, ...values.map(escapeRegExp)].map((p) => `(?:${p})`).join('|'), 'g');
  }

  /** The text with every secret occurrence replaced by `[REDACTED]`; overlapping secrets are removed entirely. */
  redact(text: string): string {
    const spans = this.spans(text);
    if (spans.length === 0) return text;
    let out = '';
    let at = 0;
    for (const [start, end] of spans) {
      out += text.slice(at, start) + REDACTED;
      at = end;
    }
    return out + text.slice(at);
  }

  /** Whether the text holds any secret. */
  containsSecret(text: string): boolean {
    for (const re of [this.combined, ...this.separate]) {
      re.lastIndex = 0;
      let m: RegExpExecArray | null;
      while ((m = re.exec(text)) !== null) {
        if (m[0].length > 0) return true;
        re.lastIndex = m.index + 1;
      }
    }
    return false;
  }

  /**
   * A deep copy with every string redacted (object keys kept), and string values of secret-named
   * fields (password, apiKey, authorization, ...) replaced whole. Cycles are kept as cycles. An Error
   * becomes its log shape `{ type, message, stack, ...own fields, cause? }` (redacted), so the
   * static type `T` does not describe errors inside the result; Buffers and Uint8Arrays holding a
   * secret are re-encoded; Dates, RegExps and other binary views are returned as they are.
   */
  redactDeep<T>(value: T): T {
    return this.walk(value, new WeakMap(), undefined) as T;
  }

  /** Merged [start, end) ranges of every secret occurrence, in order. */
  private spans(text: string): Array<[number, number]> {
    const found: Array<[number, number]> = [];
    for (const re of [this.combined, ...this.separate]) {
      re.lastIndex = 0;
      let m: RegExpExecArray | null;
      while ((m = re.exec(text)) !== null) {
        if (m[0].length > 0) found.push([m.index, m.index + m[0].length]);
        // Step one character, not past the match, so a secret overlapping this one is found too.
        re.lastIndex = m.index + 1;
      }
    }
    if (found.length <= 1) return found;
    found.sort((a, b) => a[0] - b[0] || b[1] - a[1]);
    const merged: Array<[number, number]> = [found[0]!];
    for (const span of found.slice(1)) {
      const last = merged[merged.length - 1]!;
      if (span[0] <= last[1]) last[1] = Math.max(last[1], span[1]);
      else merged.push(span);
    }
    return merged;
  }

  private walk(value: unknown, seen: WeakMap<object, unknown>, key: string | undefined): unknown {
    if (typeof value === 'string') return key !== undefined && value !== '' && isSecretField(key) ? REDACTED : this.redact(value);
    if (typeof value !== 'object' || value === null) return value;
    if (seen.has(value)) return seen.get(value);
    if (value instanceof Uint8Array) return this.redactBytes(value);
    if (value instanceof Error) return this.errorShape(value, seen);
    if (Array.isArray(value)) {
      const out: unknown[] = [];
      seen.set(value, out);
      for (const item of value as unknown[]) out.push(this.walk(item, seen, undefined));
      return out;
    }
    if (value instanceof Map) {
      const out = new Map<unknown, unknown>();
      seen.set(value, out);
      for (const [k, v] of value as Map<unknown, unknown>) out.set(k, this.walk(v, seen, typeof k === 'string' ? k : undefined));
      return out;
    }
    if (value instanceof Set) {
      const out = new Set<unknown>();
      seen.set(value, out);
      for (const v of value as Set<unknown>) out.add(this.walk(v, seen, undefined));
      return out;
    }
    if (value instanceof Date || value instanceof RegExp || value instanceof ArrayBuffer || ArrayBuffer.isView(value)) return value;
    const toJSON = (value as { toJSON?: unknown }).toJSON;
    if (typeof toJSON === 'function') {
      // What a logger would write (a URL's href, for example) is what gets redacted.
      seen.set(value, REDACTED);
      let json: unknown;
      try {
        json = (toJSON as () => unknown).call(value);
      } catch {
        return REDACTED;
      }
      const out = this.walk(json, seen, key);
      seen.set(value, out);
      return out;
    }
    const out = Object.create(Object.getPrototypeOf(value) as object | null) as Record<string, unknown>;
    seen.set(value, out);
    this.copyFields(value as Record<string, unknown>, out, seen, new Set());
    return out;
  }

  /** Own enumerable fields, redacted, as data properties (no setters run, `__proto__` stays a key). */
  private copyFields(from: Record<string, unknown>, to: Record<string, unknown>, seen: WeakMap<object, unknown>, skip: ReadonlySet<string>): void {
    for (const k of Object.keys(from)) {
      if (skip.has(k)) continue;
      let v: unknown;
      try {
        v = from[k];
      } catch {
        v = '[unreadable]';
      }
      Object.defineProperty(to, k, { value: this.walk(v, seen, k), enumerable: true, writable: true, configurable: true });
    }
  }

  private errorShape(err: Error, seen: WeakMap<object, unknown>): Record<string, unknown> {
    const ctor = (err as { constructor?: { name?: unknown } }).constructor;
    const out: Record<string, unknown> = { type: typeof ctor?.name === 'string' && ctor.name ? ctor.name : err.name };
    seen.set(err, out);
    out.message = this.walk(err.message, seen, undefined);
    out.stack = this.walk(err.stack, seen, undefined);
    this.copyFields(err as unknown as Record<string, unknown>, out, seen, new Set(['message', 'stack']));
    if (err.cause !== undefined && !('cause' in out)) out.cause = this.walk(err.cause, seen, undefined);
    if (err instanceof AggregateError && !('errors' in out)) out.errors = this.walk(err.errors, seen, undefined);
    return out;
  }

  private redactBytes(bytes: Uint8Array): Uint8Array {
    const buf = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    const utf8 = buf.toString('utf8');
    // Bytes that are not valid UTF-8 go through latin1, which round-trips every byte unchanged.
    const encoding: BufferEncoding = Buffer.from(utf8, 'utf8').equals(buf) ? 'utf8' : 'latin1';
    const text = encoding === 'utf8' ? utf8 : buf.toString('latin1');
    const redacted = this.redact(text);
    if (redacted === text) return bytes;
    const out = Buffer.from(redacted, encoding);
    return Buffer.isBuffer(bytes) ? out : new Uint8Array(out);
  }
}

/**
 * A redactor for this process: secret environment values, URL passwords from the environment,
 * built-in shapes and `config.patterns`.
 *
 * An environment variable is secret when its name matches API_KEY / KEY(S) / SECRET(S) / TOKEN(S) /
 * PASSWORD(S) / PASSWD / CREDENTIAL(S) / PRIVATE_KEY as a `_`-separated word (MARE_ROLE_KEYS,
 * OPENAI_API_KEY) and does not end in _ID, _FILE, _PATH, _DIR, _NAME, _TYPE, _URL, _HOST, _PORT or
 * _ACTIVE_KEY (those name a secret, they do not hold one), or when `config.env` lists it. Values
 * shorter than 8 characters are ignored; for name-matched variables so are booleans and numbers.
 * A list-valued secret (`id:key, id:key`) also contributes each piece (the part after `id:`) of 16
 * characters or more.
 */
export function createRedactor(config: SecretsConfig = {}, env: NodeJS.ProcessEnv = process.env): Redactor {
  const listed = new Set(config.env ?? []);
  const values = new Set<string>();
  for (const [name, raw] of Object.entries(env)) {
    if (raw === undefined) continue;
    for (const password of urlPasswords(raw)) if (password.length >= MIN_SECRET_LENGTH) values.add(password);
    const value = raw.trim();
    if (value.length < MIN_SECRET_LENGTH) continue;
    const explicit = listed.has(name);
    if (!explicit && !(SECRET_ENV_NAME.test(name) && !NOT_SECRET_ENV_NAME.test(name) && !NOT_SECRET_VALUE.test(value))) continue;
    values.add(value);
    if (raw !== value) values.add(raw);
    for (const piece of value.split(/[\s,;]+/)) {
      // In `id:key` only the key is secret: the id stays readable in messages.
      const colon = piece.includes('://') ? -1 : piece.indexOf(':');
      const secretPart = colon > 0 ? piece.slice(colon + 1) : piece;
      if (secretPart.length >= MIN_PIECE_LENGTH) values.add(secretPart);
    }
  }
  return new Redactor(values, config.patterns ?? []);
}

/** Passwords of `scheme://user:password@host` URLs in a value, as written and percent-decoded. */
function urlPasswords(value: string): string[] {
  if (!value.includes('://')) return [];
  const out: string[] = [];
  for (const m of value.matchAll(new RegExp(URL_PASSWORD, 'g'))) {
    out.push(m[0]);
    try {
      const decoded = decodeURIComponent(m[0]);
      if (decoded !== m[0]) out.push(decoded);
    } catch {
      // not percent-encoded: the literal form is enough
    }
  }
  return out;
}

// ---- data sensitivity ----

const EMAIL = /(?<![\w.%+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9][A-Za-z0-9-]*(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}(?![A-Za-z0-9-])/g;
// user@host inside a URL's authority (ssh://git@github.com, postgres://u:p@db.example.com) is not an address.
const IN_URL_AUTHORITY = /:\/\/[^\s/@]*$/;
const CARD = /(?<!\d[ -]?)\d(?:[ -]?\d){12,18}(?![ -]?\d)/g;
const SSN = /(?<![\d-])(\d{3})-(\d{2})-(\d{4})(?![\d-])/g;
const IBAN = /(?<![A-Za-z0-9])[A-Z]{2}\d{2}(?:[ -]?[A-Z0-9]){11,32}/g;
const PHONE = /(?<![\w+])\+\(?\d(?:[ .()-]{0,2}\d){7,14}(?![ .-]?\d)/;

// IBAN lengths per country (SWIFT IBAN registry); unlisted countries need only 15–34 characters.
const IBAN_LENGTHS: Readonly<Record<string, number>> = {
  AD: 24, AE: 23, AL: 28, AT: 20, AZ: 28, BA: 20, BE: 16, BG: 22, BH: 22, BI: 27, BR: 29, BY: 28, CH: 21, CR: 22,
  CY: 28, CZ: 24, DE: 22, DJ: 27, DK: 18, DO: 28, EE: 20, EG: 29, ES: 24, FI: 18, FK: 18, FO: 18, FR: 27, GB: 22,
  GE: 22, GI: 23, GL: 18, GR: 27, GT: 28, HN: 28, HR: 21, HU: 28, IE: 22, IL: 23, IQ: 23, IS: 26, IT: 27, JO: 30,
  KW: 30, KZ: 20, LB: 28, LC: 32, LI: 21, LT: 20, LU: 20, LV: 21, LY: 25, MC: 27, MD: 24, ME: 22, MK: 19, MN: 20,
  MR: 27, MT: 31, MU: 30, NI: 28, NL: 18, NO: 15, OM: 23, PK: 24, PL: 28, PS: 29, PT: 25, QA: 29, RO: 24, RS: 22,
  RU: 33, SA: 24, SC: 31, SD: 18, SE: 24, SI: 19, SK: 24, SM: 27, SO: 23, ST: 25, SV: 28, TL: 23, TN: 24, TR: 26,
  UA: 29, VA: 22, VG: 24, XK: 20, YE: 30,
};

function luhnValid(digits: string): boolean {
  let sum = 0;
  for (let i = 0; i < digits.length; i++) {
    let d = digits.charCodeAt(digits.length - 1 - i) - 48;
    if (i % 2 === 1) {
      d *= 2;
      if (d > 9) d -= 9;
    }
    sum += d;
  }
  return sum % 10 === 0;
}

function ibanValid(iban: string): boolean {
  const expected = IBAN_LENGTHS[iban.slice(0, 2)];
  if (expected !== undefined ? iban.length !== expected : iban.length < 15 || iban.length > 34) return false;
  let rest = 0;
  for (const ch of iban.slice(4) + iban.slice(0, 4)) {
    const code = ch.charCodeAt(0);
    const n = code >= 65 ? code - 55 : code - 48;
    rest = (n >= 10 ? rest * 100 + n : rest * 10 + n) % 97;
  }
  return rest === 1;
}

function hasEmail(text: string): boolean {
  for (const m of text.matchAll(EMAIL)) {
    if (!IN_URL_AUTHORITY.test(text.slice(Math.max(0, m.index - 256), m.index))) return true;
  }
  return false;
}

function hasCard(text: string): boolean {
  for (const m of text.matchAll(CARD)) {
    const digits = m[0].replace(/[ -]/g, '');
    // Issuer prefixes 2–6 (Mastercard 2-series, Amex/Diners/JCB, Visa, Mastercard, Discover/UnionPay)
    // keep millisecond timestamps and other long counters out.
    if (digits.length >= 13 && digits.length <= 19 && /^[2-6]/.test(digits) && luhnValid(digits)) return true;
  }
  return false;
}

function hasSsn(text: string): boolean {
  for (const m of text.matchAll(SSN)) {
    const [, area, group, serial] = m;
    if (area !== '000' && area !== '666' && !area!.startsWith('9') && group !== '00' && serial !== '0000') return true;
  }
  return false;
}

function hasIban(text: string): boolean {
  for (const m of text.matchAll(IBAN)) {
    // The candidate may run into following words: try every prefix that ends at a word boundary.
    const raw = m[0];
    let compact = '';
    const ends: number[] = [];
    for (let i = 0; i < raw.length; i++) {
      const ch = raw[i]!;
      if (ch === ' ' || ch === '-') continue;
      compact += ch;
      const next = i + 1 < raw.length ? raw[i + 1]! : text[m.index + raw.length] ?? '';
      if (!/[A-Za-z0-9]/.test(next)) ends.push(compact.length);
    }
    if (ends.some((len) => ibanValid(compact.slice(0, len)))) return true;
  }
  return false;
}

/** Whether a string holds personal data: e-mail, card number, US SSN, IBAN, international phone number. */
function hasPii(text: string): boolean {
  return hasEmail(text) || PHONE.test(text) || hasSsn(text) || hasCard(text) || hasIban(text);
}

/**
 * The kinds of sensitive data anywhere in a value (strings, numbers, object keys, nested objects,
 * arrays, Maps, Sets, Errors, Buffers): 'secret' for anything the redactor would redact or a
 * non-empty secret-named field; 'pii' for e-mail addresses, Luhn-valid card numbers, US SSNs,
 * mod-97-valid IBANs and international phone numbers. Sorted and unique. Without a redactor one is
 * built from the process environment on every call: pass one when calling often.
 */
export function detectSensitivity(value: unknown, redactor: Redactor = createRedactor()): Sensitivity[] {
  const found = new Set<Sensitivity>();
  const seen = new WeakSet<object>();
  const scan = (text: string): void => {
    if (!found.has('secret') && redactor.containsSecret(text)) found.add('secret');
    if (!found.has('pii') && hasPii(text)) found.add('pii');
  };
  const visit = (v: unknown, key: string | undefined): void => {
    if (found.size === 2) return;
    if (typeof v === 'string') {
      if (key !== undefined && v !== '' && isSecretField(key)) found.add('secret');
      scan(v);
      return;
    }
    if (typeof v === 'number' || typeof v === 'bigint') {
      scan(String(v));
      return;
    }
    if (typeof v !== 'object' || v === null || seen.has(v)) return;
    seen.add(v);
    if (v instanceof Uint8Array) {
      scan(Buffer.from(v.buffer, v.byteOffset, v.byteLength).toString('utf8'));
    } else if (v instanceof Error) {
      visit(v.message, undefined);
      visit(v.stack, undefined);
      visitFields(v as unknown as Record<string, unknown>);
      visit(v.cause, undefined);
    } else if (v instanceof Map) {
      for (const [k, item] of v as Map<unknown, unknown>) {
        visit(k, undefined);
        visit(item, typeof k === 'string' ? k : undefined);
      }
    } else if (v instanceof Set || Array.isArray(v)) {
      for (const item of v as Iterable<unknown>) visit(item, undefined);
    } else if (!(v instanceof Date || v instanceof RegExp || v instanceof ArrayBuffer || ArrayBuffer.isView(v))) {
      const toJSON = (v as { toJSON?: unknown }).toJSON;
      if (typeof toJSON === 'function') {
        try {
          visit((toJSON as () => unknown).call(v), key);
        } catch {
          // an unserialisable value carries nothing a log or audit row would show
        }
      } else {
        visitFields(v as Record<string, unknown>);
      }
    }
  };
  const visitFields = (obj: Record<string, unknown>): void => {
    for (const k of Object.keys(obj)) {
      scan(k);
      let item: unknown;
      try {
        item = obj[k];
      } catch {
        continue;
      }
      visit(item, k);
    }
  };
  visit(value, undefined);
  return [...found].sort();
}
