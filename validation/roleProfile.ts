import { createHash } from 'node:crypto';
import canonicalize from 'canonicalize';
import type { z } from 'zod';
import { ROLE_DEFAULTS, ROLE_SCHEMA_VERSION, RoleProfile, RoleProfileSource } from './index';

/** One thing wrong with a profile: the field (as a path, e.g. `tools[0].access`) and what is wrong. */
export interface FieldProblem {
  field: string;
  message: string;
}

/** A profile that does not validate; `problems` names every offending field. */
export class RoleValidationError extends Error {
  override readonly name = 'RoleValidationError';
  constructor(
    readonly role: string,
    readonly problems: FieldProblem[],
  ) {
    super(`invalid role profile ${role}: ${problems.map((p) => `${p.field}: ${p.message}`).join('; ')}`);
  }
}

function fieldPath(path: readonly PropertyKey[]): string {
  return path.reduce<string>((acc, key) => (typeof key === 'number' ? `${acc}[${key}]` : acc ? `${acc}.${String(key)}` : String(key)), '');
}

/** zod issues as field problems; an unknown key is named as the field, a missing one says "required". */
export function fieldProblems(error: z.ZodError, inherited = false): FieldProblem[] {
  return error.issues.flatMap((issue): FieldProblem[] => {
    const field = fieldPath(issue.path);
    if (issue.code === 'unrecognized_keys') {
      return issue.keys.map((key) => ({ field: field ? `${field}.${key}` : key, message: 'unknown field' }));
    }
    if (issue.code === 'invalid_type' && /received undefined/.test(issue.message)) {
      return [{ field: field || '(profile)', message: inherited ? 'is required (set neither here nor by the parent)' : 'is required' }];
    }
    return [{ field: field || '(profile)', message: issue.message }];
  });
}

/** Parses profile.json content; throws RoleValidationError naming each bad field. */
export function parseRoleSource(input: unknown): RoleProfileSource {
  const parsed = RoleProfileSource.safeParse(input);
  if (parsed.success) return parsed.data;
  const named = input && typeof input === 'object' ? (input as { name?: unknown; version?: unknown }) : {};
  const part = (v: unknown): string => (typeof v === 'string' ? v : '?');
  throw new RoleValidationError(`${part(named.name)}@${part(named.version)}`, fieldProblems(parsed.error));
}

/** The checksum of a profile as published: sha256 of its canonical (RFC 8785) JSON. */
export function roleChecksum(source: RoleProfileSource): string {
  return createHash('sha256').update(canonicalize(source) ?? '').digest('hex');
}

/** `parent` or `parent@range` split into name and range (undefined: latest). */
export function splitRoleRef(ref: string): { name: string; spec: string | undefined } {
  const at = ref.indexOf('@');
  return at < 0 ? { name: ref, spec: undefined } : { name: ref.slice(0, at), spec: ref.slice(at + 1) };
}

/** Finds a resolved parent by name and version/range (undefined: latest); `chain` is who is asking. */
export type ParentLookup = (name: string, spec: string | undefined, chain: string[]) => Promise<RoleProfile | undefined>;

/** Longest inheritance chain followed before giving up. */
const MAX_DEPTH = 16;

/**
 * Resolves a profile against its parent: the parent's fields are inherited, this profile's fields
 * override them (arrays are replaced, not merged), defaults fill the rest. Rejects a missing parent
 * and a cycle (a name@version appearing twice in the chain; `chain` lists the versions being
 * resolved below this one). A version may extend an earlier version of the same role.
 */
export async function resolveRoleProfile(source: RoleProfileSource, lookup: ParentLookup, chain: string[] = []): Promise<RoleProfile> {
  const id = `${source.name}@${source.version}`;
  if (chain.includes(id)) throw cycle(chain[0] ?? id, [...chain, id]);
  const ids = [...chain, id];
  let inherited: Partial<RoleProfile> = {};
  let parentRef: string | undefined;
  if (source.extends) {
    const { name, spec } = splitRoleRef(source.extends);
    const parent = await lookup(name, spec, ids);
    if (!parent) throw new RoleValidationError(id, [{ field: 'extends', message: `parent role "${source.extends}" does not exist` }]);
    await checkAncestry(id, parent, ids, lookup);
    const { name: _n, version: _v, extends: _e, ...rest } = parent;
    inherited = rest;
    parentRef = `${parent.name}@${parent.version}`;
  }
  const own = Object.fromEntries(Object.entries(source).filter(([k, v]) => v !== undefined && k !== 'extends'));
  const candidate = { ...ROLE_DEFAULTS, ...inherited, ...own, schemaVersion: ROLE_SCHEMA_VERSION, ...(parentRef ? { extends: parentRef } : {}) };
  const parsed = RoleProfile.safeParse(candidate);
  if (!parsed.success) throw new RoleValidationError(id, fieldProblems(parsed.error, Boolean(parentRef)));
  return parsed.data;
}

/** A resolved parent's own ancestors (exact name@version) must not repeat a version of the chain. */
async function checkAncestry(id: string, parent: RoleProfile, ids: string[], lookup: ParentLookup): Promise<void> {
  const seen = [...ids];
  let current: RoleProfile | undefined = parent;
  while (current) {
    const currentId = `${current.name}@${current.version}`;
    if (seen.includes(currentId)) throw cycle(id, [...seen, currentId]);
    if (seen.length > MAX_DEPTH) throw new RoleValidationError(id, [{ field: 'extends', message: `inheritance deeper than ${MAX_DEPTH} levels` }]);
    seen.push(currentId);
    if (!current.extends) return;
    const { name, spec } = splitRoleRef(current.extends);
    current = await lookup(name, spec, seen);
  }
}

function cycle(id: string, names: string[]): RoleValidationError {
  return new RoleValidationError(id, [{ field: 'extends', message: `inheritance cycle: ${names.join(' → ')}` }]);
}
