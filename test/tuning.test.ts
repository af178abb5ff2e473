import { InvalidTuningError, workerTuningFromEnv } from '../workers/tuning';

test('worker tuning variables become worker options; unset ones keep the SDK defaults', () => {
  expect(workerTuningFromEnv({})).toEqual({});
  expect(workerTuningFromEnv({ MARE_MAX_CACHED_WORKFLOWS: '500', MARE_NON_STICKY_POLL_RATIO: '0.5', MARE_MAX_ACTIVITIES: ' 200 ' })).toEqual({
    maxCachedWorkflows: 500,
    nonStickyToStickyPollRatio: 0.5,
    maxConcurrentActivityTaskExecutions: 200,
  });
});

test('a bad tuning value is a clear error naming the variable', () => {
  expect(() => workerTuningFromEnv({ MARE_MAX_ACTIVITIES: 'lots' })).toThrow(new InvalidTuningError('MARE_MAX_ACTIVITIES="lots" is not a number'));
  expect(() => workerTuningFromEnv({ MARE_MAX_WORKFLOW_TASKS: '1' })).toThrow(/MARE_MAX_WORKFLOW_TASKS: .*2/);
  expect(() => workerTuningFromEnv({ MARE_NON_STICKY_POLL_RATIO: '1.5' })).toThrow(/MARE_NON_STICKY_POLL_RATIO/);
  expect(() => workerTuningFromEnv({ MARE_MAX_CACHED_WORKFLOWS: '2.5' })).toThrow(/MARE_MAX_CACHED_WORKFLOWS/);
});

test('rate limits for model providers: per worker and per task queue', () => {
  expect(workerTuningFromEnv({ MARE_MAX_ACTIVITIES_PER_SECOND: '2.5', MARE_MAX_TASK_QUEUE_ACTIVITIES_PER_SECOND: '10' })).toEqual({
    maxActivitiesPerSecond: 2.5,
    maxTaskQueueActivitiesPerSecond: 10,
  });
  expect(() => workerTuningFromEnv({ MARE_MAX_TASK_QUEUE_ACTIVITIES_PER_SECOND: '0' })).toThrow(/MARE_MAX_TASK_QUEUE_ACTIVITIES_PER_SECOND/);
});
