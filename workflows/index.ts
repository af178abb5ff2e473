export { orchestrateTask } from './orchestrateTask';
export { executeSubtask } from './executeSubtask';
export { superviseRole } from './superviseRole';
