import path from 'node:path';
import { dataDir } from '../infra/paths';

/** Where globalSetup leaves the workflow bundle for the test files. */
export const BUNDLE_PATH = path.join(dataDir(), 'test', 'workflow-bundle.js');

/** The PostgreSQL server of these machines, tried when DATABASE_URL is unset. */
export const LOCAL_POSTGRES_URL = 'postgres://postgres@127.0.0.1:5432/postgres';
