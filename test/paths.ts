import path from 'node:path';
import { dataDir } from '../scripts/stack/datadir';

/** Where globalSetup leaves the workflow bundle for the test files. */
export const BUNDLE_PATH = path.join(dataDir(), 'test', 'workflow-bundle.js');
