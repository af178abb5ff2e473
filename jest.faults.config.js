/** The fault suite (`npm run test:faults`): crashes, restarts and misbehaving models, each checked on history and database. */
const base = require('./jest.config');

module.exports = {
  ...base,
  roots: ['<rootDir>/test/faults'],
  testPathIgnorePatterns: [],
  testTimeout: 300_000,
  // Each file starts its own Temporal server and worker processes; one file at a time keeps kill timings honest.
  maxWorkers: 1,
};
