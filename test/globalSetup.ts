import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { bundleWorkflowCode } from '@temporalio/worker';
import { resolveTemporalCli } from '../scripts/stack/temporal';
import { BUNDLE_PATH } from './paths';

/** Bundles the workflows once for every test file, and makes sure the Temporal CLI is there. */
export default async function globalSetup(): Promise<void> {
  await resolveTemporalCli((msg) => process.stderr.write(`[mare test] ${msg}\n`));
  const { code } = await bundleWorkflowCode({ workflowsPath: require.resolve('../workflows'), logger: quietLogger });
  mkdirSync(path.dirname(BUNDLE_PATH), { recursive: true });
  writeFileSync(BUNDLE_PATH, code);
}

const noop = (): void => undefined;
const quietLogger = { trace: noop, debug: noop, info: noop, warn: noop, error: (m: string) => process.stderr.write(`${m}\n`), log: noop };
