export { createPolicyActivities } from './activities';
