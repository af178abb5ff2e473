export { orchestrateTask } from './orchestrateTask';
export { executeSubtask } from './executeSubtask';
