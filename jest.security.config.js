/** The security suite (`npm run test:security`): the attacks of the threat model (docs/threat-model.md), each tried and refused. */
const base = require('./jest.config');

module.exports = {
  ...base,
  roots: ['<rootDir>/test/security'],
  testPathIgnorePatterns: [],
};
