import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import path from 'node:path';

// The documentation's links and code paths point at things that exist, so a move or a rename that
// forgets the docs fails here instead of leaving a dead link.
const root = path.join(__dirname, '..');

/** Every Markdown file the docs consist of, relative to the repository root. */
function markdownFiles(): string[] {
  const docs = readdirSync(path.join(root, 'docs'), { recursive: true, encoding: 'utf8' })
    .filter((f) => f.endsWith('.md'))
    .map((f) => path.join('docs', f));
  const bench = readdirSync(path.join(root, 'bench'))
    .filter((f) => f.endsWith('.md'))
    .map((f) => path.join('bench', f));
  return ['README.md', 'CONTRIBUTING.md', ...docs, ...bench].sort();
}

/** The text outside fenced code blocks, line by line (fences hold shell comments, not headings). */
function proseLines(text: string): string[] {
  let fenced = false;
  const out: string[] = [];
  for (const line of text.split('\n')) {
    if (/^\s*(```|~~~)/.test(line)) {
      fenced = !fenced;
      continue;
    }
    if (!fenced) out.push(line);
  }
  return out;
}

/** GitHub's anchor for a heading: rendered text, lower case, punctuation dropped, spaces to dashes. */
function githubSlug(heading: string): string {
  return heading
    .replace(/\[([^\]]*)\]\([^)]*\)/g, '$1')
    .toLowerCase()
    .replace(/[^\p{L}\p{M}\p{N}\p{Pc} -]/gu, '')
    .replace(/ /g, '-');
}

/** The anchors of a Markdown file's headings, with GitHub's -1, -2 suffixes for repeats. */
function anchors(file: string): Set<string> {
  const seen = new Map<string, number>();
  const out = new Set<string>();
  for (const line of proseLines(readFileSync(path.join(root, file), 'utf8'))) {
    const m = /^#{1,6}\s+(.*?)\s*#*\s*$/.exec(line);
    if (!m) continue;
    const slug = githubSlug(m[1]!);
    const n = seen.get(slug) ?? 0;
    seen.set(slug, n + 1);
    out.add(n === 0 ? slug : `${slug}-${n}`);
  }
  return out;
}

/** Relative links `[text](target)` outside code, as written. */
function relativeLinks(text: string): string[] {
  const prose = proseLines(text)
    .join('\n')
    .replace(/`[^`\n]*`/g, '``');
  const links: string[] = [];
  for (const m of prose.matchAll(/\[[^\]]*\]\(([^)\s]+)(?:\s+"[^"]*")?\)/g)) {
    const target = m[1]!;
    if (/^[a-z][a-z0-9+.-]*:/i.test(target)) continue;
    links.push(target);
  }
  return links;
}

/** Code spans that name a repository file, e.g. `infra/crypto/keyring.ts`. */
function codePaths(text: string): string[] {
  const re = /`((?:core|validation|infra|activities|workflows|workers|client|cli|servers|dev|db|bench|test|scripts)\/[\w./-]+\.(?:ts|js|json|sql|md))`/g;
  return [...text.matchAll(re)].map((m) => m[1]!);
}

const files = markdownFiles();

test('the documentation set is the one this test walks', () => {
  expect(files).toEqual(expect.arrayContaining(['README.md', 'CONTRIBUTING.md', path.join('docs', 'architecture.md'), path.join('bench', 'README.md')]));
});

test('README.md stays one or two screens: under 15,000 bytes', () => {
  expect(statSync(path.join(root, 'README.md')).size).toBeLessThan(15_000);
});

test.each(files)('%s: every relative link reaches a file, and every #anchor a heading', (file) => {
  const broken: string[] = [];
  for (const link of relativeLinks(readFileSync(path.join(root, file), 'utf8'))) {
    const [target = '', anchor] = link.split('#') as [string, string | undefined];
    const resolved = target === '' ? file : path.normalize(path.join(path.dirname(file), decodeURIComponent(target)));
    if (!existsSync(path.join(root, resolved))) {
      broken.push(`${link}: no file ${resolved}`);
      continue;
    }
    if (anchor !== undefined && resolved.endsWith('.md') && !anchors(resolved).has(anchor)) {
      broken.push(`${link}: no heading with anchor #${anchor} in ${resolved}`);
    }
  }
  expect(broken).toEqual([]);
});

test.each(files)('%s: every repository path in backticks exists', (file) => {
  const missing = codePaths(readFileSync(path.join(root, file), 'utf8')).filter((p) => !existsSync(path.join(root, p)));
  expect(missing).toEqual([]);
});

test('the link checker catches what it should', () => {
  expect(githubSlug('Tools (MCP)')).toBe('tools-mcp');
  expect(githubSlug('The profile (`validation/role.ts`, schema version 1)')).toBe('the-profile-validationrolets-schema-version-1');
  expect(githubSlug('test/faults/crash.test.ts')).toBe('testfaultscrashtestts');
  expect(relativeLinks('[a](x.md#y) `[b](no.md)` [c](https://e.org)\n```\n[d](z.md)\n```')).toEqual(['x.md#y']);
  expect(codePaths('see `infra/crypto/keyring.ts` and `dist/cli/mare.js`')).toEqual(['infra/crypto/keyring.ts']);
});
