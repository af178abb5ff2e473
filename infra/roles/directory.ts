import fs from 'node:fs';
import path from 'node:path';
import semver from 'semver';
import { z } from 'zod';
import { ROLE_SCHEMA_VERSION, type RoleProfile, type RoleProfileSource } from '../../validation';
import type { Actor } from '../db/documentStore';
import { RoleRepositoryError, type RoleRepository } from '../db/roleRepository';
import { parseRoleSource, resolveRoleProfile, roleChecksum, RoleValidationError, splitRoleRef } from '../../validation/roleProfile';

/**
 * The seed's directory layout of a REP set:
 *   reps/index.json                          which roles and versions, and each role's latest
 *   reps/{name}/{version}/profile.json       the profile as written
 *   reps/{name}/{version}/metadata.json      checksum, publisher, deprecation
 */

const IndexFile = z.strictObject({
  schemaVersion: z.literal(ROLE_SCHEMA_VERSION),
  exportedAt: z.string().optional(),
  roles: z.record(z.string(), z.strictObject({ latest: z.string(), versions: z.array(z.string()).min(1) })),
});

const MetadataFile = z.strictObject({
  name: z.string(),
  version: z.string(),
  checksum: z.string().optional(),
  publishedAt: z.string().optional(),
  publishedBy: z.string().optional(),
  deprecated: z.strictObject({ at: z.string(), reason: z.string() }).nullable().optional(),
  latest: z.boolean().optional(),
  /** The exact parent version the profile was resolved against when published. */
  resolvedExtends: z.string().nullable().optional(),
});

/** A directory that is not a valid REP set; names the file and what is wrong. */
export class RoleDirectoryError extends Error {
  override readonly name = 'RoleDirectoryError';
}

interface Entry {
  source: RoleProfileSource;
  checksum: string;
  deprecated?: string;
  /** From metadata.json: the exact parent it was published against, so import resolves the same. */
  resolvedExtends?: string;
  file: string;
}

/** What an import did, per version. */
export interface ImportReport {
  published: string[];
  unchanged: string[];
  /** Only with onConflict "skip": versions already published with other content. */
  skipped: string[];
  deprecated: string[];
}

function readJson(file: string): unknown {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch {
    throw new RoleDirectoryError(`${file} is missing`);
  }
  try {
    return JSON.parse(text);
  } catch (err) {
    throw new RoleDirectoryError(`${file} is not valid JSON: ${(err as Error).message}`);
  }
}

/** Reads and validates a REP directory (every file, before anything is published). */
export function readRoleDirectory(dir: string): { entries: Entry[]; latest: Map<string, string> } {
  const indexFile = path.join(dir, 'index.json');
  const index = IndexFile.safeParse(readJson(indexFile));
  if (!index.success) throw new RoleDirectoryError(`${indexFile}: ${index.error.issues.map((i) => `${i.path.join('.') || '(file)'}: ${i.message}`).join('; ')}`);
  const entries: Entry[] = [];
  const latest = new Map<string, string>();
  for (const [name, { latest: head, versions }] of Object.entries(index.data.roles)) {
    if (!versions.includes(head)) throw new RoleDirectoryError(`${indexFile}: roles.${name}.latest "${head}" is not among its versions`);
    latest.set(name, head);
    for (const version of versions) {
      const file = path.join(dir, name, version, 'profile.json');
      let source: RoleProfileSource;
      try {
        source = parseRoleSource(readJson(file));
      } catch (err) {
        throw err instanceof RoleValidationError ? new RoleDirectoryError(`${file}: ${err.message}`) : err;
      }
      if (source.name !== name || source.version !== version) {
        throw new RoleDirectoryError(`${file} holds ${source.name}@${source.version}, but its directory says ${name}@${version}`);
      }
      const checksum = roleChecksum(source);
      const metaFile = path.join(dir, name, version, 'metadata.json');
      const meta = fs.existsSync(metaFile) ? MetadataFile.safeParse(readJson(metaFile)) : undefined;
      if (meta && !meta.success) throw new RoleDirectoryError(`${metaFile}: ${meta.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; ')}`);
      if (meta?.data.checksum && meta.data.checksum !== checksum) {
        throw new RoleDirectoryError(`${file} does not match the checksum in ${metaFile} (it was changed after export)`);
      }
      entries.push({
        source,
        checksum,
        file,
        ...(meta?.data.deprecated ? { deprecated: meta.data.deprecated.reason || 'deprecated' } : {}),
        ...(meta?.data.resolvedExtends ? { resolvedExtends: meta.data.resolvedExtends } : {}),
      });
    }
  }
  const listed = new Set(entries.map((e) => path.dirname(e.file)));
  for (const name of fs.readdirSync(dir, { withFileTypes: true }).filter((d) => d.isDirectory())) {
    for (const version of fs.readdirSync(path.join(dir, name.name))) {
      const versionDir = path.join(dir, name.name, version);
      if (!listed.has(versionDir)) throw new RoleDirectoryError(`${versionDir} is not listed in ${indexFile}`);
    }
  }
  return { entries, latest };
}

/**
 * Imports a REP directory in one transaction: all versions are validated and resolved first
 * (parents from the directory or the repository), then published parents first. A version
 * already published with the same checksum is left as it is; with other content it is an error,
 * or skipped with `onConflict: "skip"` (used for the bundled default roles).
 */
export async function importRoleDirectory(
  repo: RoleRepository,
  dir: string,
  who: Actor,
  opts: { onConflict?: 'error' | 'skip' } = {},
): Promise<ImportReport> {
  const { entries, latest } = readRoleDirectory(dir);
  const resolved = new Map<string, RoleProfile>();
  const order: Entry[] = [];

  const resolve = async (entry: Entry, chain: string[]): Promise<RoleProfile> => {
    const id = `${entry.source.name}@${entry.source.version}`;
    const done = resolved.get(id);
    if (done) return done;
    // An exported profile names the exact parent it was published against; use that one.
    const pinned = entry.resolvedExtends ? splitRoleRef(entry.resolvedExtends) : undefined;
    const profile = await resolveRoleProfile(
      entry.source,
      async (name, spec, asking) => {
        const wanted = pinned?.name === name && asking.length === chain.length + 1 ? pinned.spec : spec;
        const local = pickLocal(entries, latest, name, wanted);
        if (local) return resolve(local, asking);
        return repo.lookupProfile(name, wanted);
      },
      chain,
    );
    resolved.set(id, profile);
    order.push(entry);
    return profile;
  };
  for (const entry of entries) {
    try {
      await resolve(entry, []);
    } catch (err) {
      throw err instanceof RoleValidationError ? new RoleDirectoryError(`${entry.file}: ${err.message}`) : err;
    }
  }

  const report: ImportReport = { published: [], unchanged: [], skipped: [], deprecated: [] };
  await repo.inTransaction(async (db) => {
    await db.query(`SELECT pg_advisory_xact_lock(hashtext('mare-roles-import'))`);
    const heads = new Set((await db.query<{ name: string }>('SELECT name FROM role_heads')).rows.map((r) => r.name));
    for (const entry of order) {
      const id = `${entry.source.name}@${entry.source.version}`;
      const existing = await db.query<{ checksum: string; deprecated_at: Date | null }>(
        'SELECT checksum, deprecated_at FROM role_versions WHERE name = $1 AND version = $2',
        [entry.source.name, entry.source.version],
      );
      const row = existing.rows[0];
      if (row && row.checksum !== entry.checksum) {
        if (opts.onConflict === 'skip') {
          report.skipped.push(id);
          continue;
        }
        throw new RoleRepositoryError(`${id} is already published with different content (checksum ${row.checksum.slice(0, 12)}…); publish a new version instead`);
      }
      if (row) report.unchanged.push(id);
      else {
        await repo.insertVersion(db, entry.source, resolved.get(id)!, who, false);
        report.published.push(id);
      }
      if (entry.deprecated && !row?.deprecated_at) {
        await db.query('UPDATE role_versions SET deprecated_at = now(), deprecated_reason = $3 WHERE name = $1 AND version = $2', [
          entry.source.name,
          entry.source.version,
          entry.deprecated,
        ]);
        await repo.audit(db, { actor: who.actor, reason: entry.deprecated }, 'deprecate', entry.source.name, entry.source.version, { import: dir });
        report.deprecated.push(id);
      }
    }
    // `latest` follows the index: for a role this import created, and where the index's latest is
    // higher than the current one (so an export made after a rollback round-trips).
    for (const [name, head] of latest) {
      const current = (await db.query<{ latest: string }>('SELECT latest FROM role_heads WHERE name = $1', [name])).rows[0]?.latest;
      if (current && current !== head && (!heads.has(name) || semver.gt(head, current))) {
        await db.query('UPDATE role_heads SET latest = $2, updated_at = now() WHERE name = $1', [name, head]);
        await repo.audit(db, who, 'set-latest', name, head, { from: current, to: head, import: dir });
      }
    }
  });
  return report;
}

/**
 * The version in the directory a parent reference means, as the repository would read it: no
 * spec is the index's latest, a range skips deprecated versions, an exact version is itself.
 */
function pickLocal(entries: Entry[], latest: Map<string, string>, name: string, spec: string | undefined): Entry | undefined {
  const candidates = entries.filter((e) => e.source.name === name);
  const find = (version: string | undefined | null): Entry | undefined => candidates.find((e) => e.source.version === version);
  if (!spec) return find(latest.get(name));
  if (semver.valid(spec)) return find(spec);
  return find(semver.maxSatisfying(candidates.filter((e) => !e.deprecated).map((e) => e.source.version), spec));
}

/** Writes every version (deprecated ones too) in the seed layout; returns how many. */
export async function exportRoleDirectory(repo: RoleRepository, dir: string): Promise<{ roles: number; versions: number }> {
  if (fs.existsSync(dir) && fs.readdirSync(dir).length) throw new RoleDirectoryError(`${dir} is not empty; export into a new or empty directory`);
  fs.mkdirSync(dir, { recursive: true });
  const all = await repo.list({ allVersions: true, includeDeprecated: true });
  const index: z.infer<typeof IndexFile> = { schemaVersion: ROLE_SCHEMA_VERSION, exportedAt: new Date().toISOString(), roles: {} };
  for (const role of all) {
    const versionDir = path.join(dir, role.name, role.version);
    fs.mkdirSync(versionDir, { recursive: true });
    fs.writeFileSync(path.join(versionDir, 'profile.json'), `${JSON.stringify(role.source, null, 2)}\n`);
    const metadata: z.infer<typeof MetadataFile> = {
      name: role.name,
      version: role.version,
      checksum: role.checksum,
      publishedAt: role.publishedAt.toISOString(),
      publishedBy: role.publishedBy,
      deprecated: role.deprecated ? { at: role.deprecated.at.toISOString(), reason: role.deprecated.reason } : null,
      latest: role.latest,
      resolvedExtends: role.profile.extends ?? null,
    };
    fs.writeFileSync(path.join(versionDir, 'metadata.json'), `${JSON.stringify(metadata, null, 2)}\n`);
    const entry = (index.roles[role.name] ??= { latest: role.version, versions: [] });
    entry.versions.push(role.version);
    if (role.latest) entry.latest = role.version;
  }
  fs.writeFileSync(path.join(dir, 'index.json'), `${JSON.stringify(index, null, 2)}\n`);
  return { roles: Object.keys(index.roles).length, versions: all.length };
}
