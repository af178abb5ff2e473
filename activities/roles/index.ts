export { createRoleActivities, type LoadRoleInput } from './activities';
