import type { Connection } from '@temporalio/client';
import type { WorkerDeploymentVersion } from '@temporalio/common';
import type { WorkerDeploymentOptions } from '@temporalio/worker';

/**
 * Worker versioning with Temporal's worker deployments: each worker announces its deployment name
 * and build id; a task's workflows are pinned to the version they started on, so a deploy of new
 * workflow code never replays an open task against it. Role supervisors are pinned too, and stay on
 * their version until they are retired (`mare supervisor retire`; the next embodiment starts one on
 * the current version). A new version gets work once it is made current (`mare deployment set-current`, or the Temporal CLI's
 * `temporal worker deployment set-current-version`).
 */

/** MARE_DEPLOYMENT_NAME and MARE_BUILD_ID that do not make a version. */
export class DeploymentConfigError extends Error {
  override readonly name = 'DeploymentConfigError';
}

const PART = /^[A-Za-z0-9._-]{1,200}$/;

/** The deployment version from MARE_DEPLOYMENT_NAME and MARE_BUILD_ID (both or neither); undefined: unversioned. */
export function deploymentFromEnv(env: NodeJS.ProcessEnv = process.env): WorkerDeploymentVersion | undefined {
  const deploymentName = env.MARE_DEPLOYMENT_NAME?.trim();
  const buildId = env.MARE_BUILD_ID?.trim();
  if (!deploymentName && !buildId) return undefined;
  if (!deploymentName || !buildId) throw new DeploymentConfigError('set both MARE_DEPLOYMENT_NAME and MARE_BUILD_ID for worker versioning, or neither');
  for (const [name, value] of [['MARE_DEPLOYMENT_NAME', deploymentName], ['MARE_BUILD_ID', buildId]] as const) {
    if (!PART.test(value)) throw new DeploymentConfigError(`${name}="${value}" must be 1-200 letters, digits, dots, dashes or underscores`);
  }
  return { deploymentName, buildId };
}

/** The SDK's options for a versioned worker: workflows pinned unless their definition says otherwise. */
export function deploymentOptions(version: WorkerDeploymentVersion): WorkerDeploymentOptions {
  return { version, useWorkerVersioning: true, defaultVersioningBehavior: 'PINNED' };
}

/**
 * Makes `version` the current version of its deployment: new tasks start on it. The server knows a
 * version only once one of its workers has polled, so this retries for up to `waitMs`.
 */
export async function setCurrentVersion(connection: Connection, namespace: string, version: WorkerDeploymentVersion, opts: { waitMs?: number; identity?: string } = {}): Promise<void> {
  const deadline = Date.now() + (opts.waitMs ?? 30_000);
  for (;;) {
    try {
      await connection.workflowService.setWorkerDeploymentCurrentVersion({
        namespace,
        deploymentName: version.deploymentName,
        buildId: version.buildId,
        identity: opts.identity ?? 'mare',
      });
      return;
    } catch (err) {
      if (Date.now() >= deadline) throw err;
      await new Promise((resolve) => setTimeout(resolve, 500));
    }
  }
}
