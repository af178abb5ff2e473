// ESLint: typed rules everywhere, the layer order of docs/architecture.md, and determinism guards in
// workflows/ and core/ (workflow code runs in Temporal's sandbox, and core/ is imported by it).
const js = require('@eslint/js');
const tseslint = require('typescript-eslint');
const importPlugin = require('eslint-plugin-import');
const { builtinModules } = require('node:module');

// Version decisions are taken once, at the start of a run, in workflows/versions.ts (docs/changing-workflow-code.md).
const PATCH_MESSAGE = 'Version decisions happen at the start of a run only: add the change to WORKFLOW_CHANGES in workflows/versions.ts and read workflowVersions().';
const SANDBOX_MESSAGE = 'Workflow code runs in a deterministic sandbox: no Node builtins; use an activity.';

/**
 * The layers (docs/architecture.md) and what each may import. `values`: folders whose code it may
 * import; `types`: folders it may import types from only (`import type`, erased at compile time).
 * A folder may always import from itself. The arrows run one way, so the next change cannot bend them.
 */
const LAYERS = {
  core: { values: [], types: ['validation'] },
  validation: { values: ['core'], types: [] },
  infra: { values: ['core', 'validation'], types: [] },
  activities: { values: ['core', 'validation', 'infra'], types: [] },
  workflows: { values: ['core'], types: ['validation', 'activities'] },
  workers: { values: ['core', 'validation', 'infra', 'activities'], types: ['workflows'] },
  client: { values: ['core', 'validation', 'infra', 'workflows'], types: [] },
  servers: { values: ['core', 'validation', 'infra', 'client'], types: [] },
  dev: { values: ['core', 'validation', 'infra', 'activities', 'workers', 'client', 'servers'], types: [] },
  cli: { values: ['core', 'validation', 'infra', 'activities', 'workflows', 'workers', 'client', 'servers', 'dev'], types: [] },
  bench: { values: ['core', 'validation', 'infra', 'activities', 'workflows', 'workers', 'client', 'servers', 'dev'], types: [] },
};
const FOLDERS = [...Object.keys(LAYERS), 'test'];

/** A relative import that climbs to the repository root and enters `folder`. */
const into = (folders) => `^(\\.\\./)+(${folders.join('|')})(/|$)`;

/** The no-restricted-imports options for files of `layer` (ESLint keeps one set per file, so all restrictions meet here). */
function restrictedImports(layer, { sandbox, versionsFile }) {
  const { values, types } = LAYERS[layer];
  const forbidden = FOLDERS.filter((f) => f !== layer && !values.includes(f) && !types.includes(f));
  const layerMessage = `${layer}/ may import ${[layer, ...values].join(', ')}${types.length ? ` (and types from ${types.join(', ')})` : ''}: docs/architecture.md, "Layers".`;
  const patterns = [];
  if (forbidden.length) patterns.push({ regex: into(forbidden), message: layerMessage });
  if (types.length) patterns.push({ regex: into(types), allowTypeImports: true, message: layerMessage });
  const paths = [];
  if (sandbox) {
    paths.push(...builtinModules.map((name) => ({ name, message: SANDBOX_MESSAGE })));
    patterns.push({ group: ['node:*'], message: SANDBOX_MESSAGE });
    // Every module a workflow imports is initialised again for each run; zod schemas there cost
    // 27% of the worker's CPU and 40% of its memory in `npm run bench` (bench/TUNING.md).
    patterns.push({ regex: '^zod(/.*)?$', allowTypeImports: true, message: 'Workflow code and core/ import only types from zod: validate in an activity (validation/).' });
  }
  if (!versionsFile) paths.push({ name: '@temporalio/workflow', importNames: ['patched', 'deprecatePatch'], message: PATCH_MESSAGE });
  return ['error', { paths, patterns }];
}

/** Determinism guards for code that runs inside a workflow (workflows/, core/, the bench's bare workflows). */
function sandboxRules(versionsFile) {
  return {
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
  };
}

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
  // One block per layer: its import restrictions, and the sandbox guards where workflow code runs.
  ...Object.keys(LAYERS).map((layer) => {
    const sandbox = layer === 'workflows' || layer === 'core';
    return {
      files: [`${layer}/**/*.ts`],
      ignores: ['workflows/versions.ts', 'bench/bareWorkflows.ts'],
      rules: {
        'no-restricted-imports': restrictedImports(layer, { sandbox, versionsFile: false }),
        // Production code: a function longer than this is a story that wants chapters (docs/architecture.md, "Size").
        ...(layer === 'bench' ? {} : { 'max-lines-per-function': ['error', { max: 120, skipBlankLines: true, skipComments: true }] }),
        ...(sandbox ? sandboxRules(false) : {}),
      },
    };
  }),
  {
    files: ['workflows/versions.ts'],
    rules: { 'no-restricted-imports': restrictedImports('workflows', { sandbox: true, versionsFile: true }), ...sandboxRules(true) },
  },
  {
    files: ['bench/bareWorkflows.ts'],
    rules: { 'no-restricted-imports': restrictedImports('workflows', { sandbox: true, versionsFile: false }), ...sandboxRules(false) },
  },
  {
    // Outside workflow code a patch means nothing; anywhere but workflows/versions.ts it is refused.
    files: ['test/**/*.ts'],
    rules: { 'no-restricted-imports': ['error', { paths: [{ name: '@temporalio/workflow', importNames: ['patched', 'deprecatePatch'], message: PATCH_MESSAGE }] }] },
  },
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
