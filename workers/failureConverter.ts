import { DefaultFailureConverter } from '@temporalio/common';

/**
 * MARE's failure converter: error messages and stack traces move into the failure's encoded
 * attributes, a payload, so the payload codec encrypts them like any other data. Loaded by path
 * (FAILURE_CONVERTER_PATH) by workers and clients, and bundled into the workflow code.
 */
export const failureConverter = new DefaultFailureConverter({ encodeCommonAttributes: true });
