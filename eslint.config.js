// ESLint: typed rules everywhere, determinism guards in workflows/ (they run in Temporal's sandbox).
const js = require('@eslint/js');
const tseslint = require('typescript-eslint');
const importPlugin = require('eslint-plugin-import');
const { builtinModules } = require('node:module');

// Version decisions are taken once, at the start of a run, in workflows/versions.ts (docs/changing-workflow-code.md).
const PATCH_MESSAGE = 'Version decisions happen at the start of a run only: add the change to WORKFLOW_CHANGES in workflows/versions.ts and read workflowVersions().';

module.exports = tseslint.config(
  // test/fixtures/*.js are plain Node scripts run as child processes against dist/ (no TypeScript project).
  { ignores: ['dist/', 'node_modules/', '.mare/', 'coverage/', 'eslint.config.js', 'jest.config.js', 'jest.faults.config.js', 'jest.security.config.js', 'test/fixtures/*.js'] },
  js.configs.recommended,
  ...tseslint.configs.recommendedTypeChecked,
  {
    languageOptions: { parserOptions: { projectService: true, tsconfigRootDir: __dirname } },
    plugins: { import: importPlugin },
    settings: {
      'import/resolver': { node: { extensions: ['.ts', '.js', '.json'] } },
      'import/parsers': { '@typescript-eslint/parser': ['.ts'] },
      'import/extensions': ['.ts', '.js'],
    },
    rules: {
      '@typescript-eslint/no-floating-promises': 'error',
      '@typescript-eslint/consistent-type-imports': ['error', { fixStyle: 'inline-type-imports' }],
      'import/no-cycle': 'error',
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_' }],
    },
  },
  {
    // Outside workflow code a patch means nothing; anywhere but workflows/versions.ts it is refused.
    files: ['**/*.ts'],
    ignores: ['workflows/**', 'bench/bareWorkflows.ts'],
    rules: { 'no-restricted-imports': ['error', { paths: [{ name: '@temporalio/workflow', importNames: ['patched', 'deprecatePatch'], message: PATCH_MESSAGE }] }] },
  },
  ...[false, true].map((versionsFile) => ({
    files: versionsFile ? ['workflows/versions.ts'] : ['workflows/**/*.ts', 'bench/bareWorkflows.ts'],
    ...(versionsFile ? {} : { ignores: ['workflows/versions.ts'] }),
    rules: {
      'no-restricted-imports': [
        'error',
        {
          paths: [
            ...builtinModules.map((name) => ({ name, message: 'Workflow code runs in a deterministic sandbox: no Node builtins; use an activity.' })),
            ...(versionsFile ? [] : [{ name: '@temporalio/workflow', importNames: ['patched', 'deprecatePatch'], message: PATCH_MESSAGE }]),
          ],
          patterns: [
            { group: ['node:*'], message: 'Workflow code runs in a deterministic sandbox: no Node builtins; use an activity.' },
            {
              // Every module a workflow imports is initialised again for each run; zod schemas there cost
              // 27% of the worker's CPU and 40% of its memory in `npm run bench` (bench/TUNING.md).
              regex: '^zod(/.*)?$|(^|/)schemas(/(index|criteria|plan|role|tools|model|task|policy|toolConfig))?$',
              allowTypeImports: true,
              message: 'Workflow code imports only types from zod-built modules: use ../schemas/constants, ../schemas/usage, ../schemas/describe, and validate in an activity.',
            },
          ],
        },
      ],
      'no-restricted-globals': [
        'error',
        ...['setTimeout', 'setInterval', 'setImmediate', 'process', 'Buffer', 'fetch', 'require'].map((name) => ({
          name,
          message: 'Not deterministic (or not available) in workflow code: use @temporalio/workflow (sleep, condition) or an activity.',
        })),
      ],
      'no-restricted-properties': [
        'error',
        { object: 'Date', property: 'now', message: 'Use workflow time deliberately: there is no wall clock in workflow code.' },
        { object: 'Math', property: 'random', message: 'Not deterministic: use uuid4() from @temporalio/workflow if you must.' },
        { object: 'crypto', property: 'randomUUID', message: 'Not deterministic: use uuid4() from @temporalio/workflow.' },
      ],
      'no-restricted-syntax': [
        'error',
        { selector: "NewExpression[callee.name='Date'][arguments.length=0]", message: 'new Date() reads a clock: not in workflow code.' },
        ...(versionsFile
          ? []
          : [
              { selector: 'CallExpression[callee.name=/^(patched|deprecatePatch)$/]', message: PATCH_MESSAGE },
              { selector: 'CallExpression[callee.property.name=/^(patched|deprecatePatch)$/]', message: PATCH_MESSAGE },
            ]),
      ],
    },
  })),
  {
    files: ['test/**/*.ts'],
    rules: {
      '@typescript-eslint/no-unsafe-assignment': 'off',
      '@typescript-eslint/no-unsafe-member-access': 'off',
      '@typescript-eslint/no-unsafe-argument': 'off',
      '@typescript-eslint/no-unsafe-return': 'off',
      // activities are plain functions handed to MockActivityEnvironment.run
      '@typescript-eslint/unbound-method': 'off',
      '@typescript-eslint/no-non-null-assertion': 'off',
    },
  },
);
