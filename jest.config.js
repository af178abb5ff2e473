/** Jest runs the TypeScript sources through ts-jest; workflows are bundled once in globalSetup. */
module.exports = {
  testEnvironment: 'node',
  roots: ['<rootDir>/test'],
  testMatch: ['**/*.test.ts'],
  transform: { '^.+\\.ts$': ['ts-jest', { tsconfig: 'tsconfig.json', isolatedModules: true }] },
  globalSetup: '<rootDir>/test/globalSetup.ts',
  testTimeout: 180_000,
  maxWorkers: 2,
};
