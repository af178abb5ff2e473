import { existsSync, readFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';

/** Where MARE's files are: the project root (migrations, bundled roles and policies) and the local data directory. */

/** The project root cannot be found (MARE runs from outside its package). */
export class PathError extends Error {
  override readonly name = 'PathError';

  constructor(
    message: string,
    readonly code: string,
  ) {
    super(message);
  }
}

let cachedRoot: string | undefined;

/** Returns the MARE project root: the nearest ancestor of this file holding a package.json named "mare". */
export function projectRoot(): string {
  if (cachedRoot !== undefined) return cachedRoot;
  // Walking up (instead of a fixed "../..") works both from infra/*.ts and from dist/infra/*.js.
  let dir = __dirname;
  for (;;) {
    const pkgFile = join(dir, 'package.json');
    if (existsSync(pkgFile)) {
      try {
        const pkg = JSON.parse(readFileSync(pkgFile, 'utf8')) as { name?: unknown };
        if (pkg.name === 'mare') {
          cachedRoot = dir;
          return dir;
        }
      } catch {
        // An unreadable or invalid package.json belongs to something else; keep walking up.
      }
    }
    const parent = dirname(dir);
    if (parent === dir) {
      throw new PathError(
        `Could not find the MARE project root (a package.json named "mare") above ${__dirname}; set MARE_DATA_DIR`,
        'PROJECT_ROOT_NOT_FOUND',
      );
    }
    dir = parent;
  }
}

/** Returns the directory for local state: $MARE_DATA_DIR when set, else <project root>/.mare. */
export function dataDir(): string {
  const fromEnv = process.env.MARE_DATA_DIR;
  if (fromEnv !== undefined && fromEnv.trim() !== '') return resolve(fromEnv);
  return join(projectRoot(), '.mare');
}
