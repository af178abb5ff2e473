/**
 * Issue 15 §4: with a payload keyring, only holders of it (MARE's client, the HTTP API, the codec
 * server's token holders) can decide an approval: a decision must carry a signature by the
 * approvers' key derived from the keyring, which the update validator verifies. A stranger who can
 * reach Temporal, as the seen attack, is refused and leaves no trace in the run.
 */
import { execFile } from 'node:child_process';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { defaultPayloadConverter } from '@temporalio/common';
import { Client, WorkflowUpdateFailedError } from '@temporalio/client';
import { newKey, type Keyring } from '../../infra/crypto/keyring';
import { createCodecServer } from '../../servers/codecServer';
import { type ApprovalView } from '../../validation';
import { subtaskWorkflowId } from '../../core/constants';
import { resolveTemporalCli } from '../../dev/temporal';
import { signApproval } from '../../infra/crypto/approvalSigning';
import { EncryptionCodec, mareDataConverter } from '../../infra/crypto/payloadCodec';
import { createTestStack, historyOf, planReply, toolCall, type ScriptInput, type TestStack } from '../helpers';

const keyringOf = (k: { id: string; key: Buffer }): Keyring => ({ activeKeyId: k.id, keys: new Map([[k.id, k.key]]), origin: 'test' });
const keyring = keyringOf(newKey());
let stack: TestStack;
let cli: string;

beforeAll(async () => {
  stack = await createTestStack({ payloadKeyring: keyring });
  cli = await resolveTemporalCli(() => undefined);
  await stack.policies.repository.publish(
    {
      schemaVersion: 1,
      name: 'people-decide',
      version: '1.0.0',
      rules: [{ id: 'every-write', when: { targets: ['workspace.write'] }, decision: 'escalate', reason: 'a person approves every write', approval: { timeoutSeconds: 3_600, onTimeout: 'deny' } }],
    },
    { actor: 'test' },
  );
});

afterAll(async () => stack?.teardown());

function run(file: string, args: string[]): Promise<{ code: number; out: string }> {
  return new Promise((resolve) => execFile(file, args, (err, stdout, stderr) => resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, out: `${stdout}${stderr}` })));
}

async function pending(taskId: string, approvalId?: string): Promise<ApprovalView> {
  for (;;) {
    const found = (await stack.client.approvals(taskId).catch(() => [])).find((a) => a.status === 'pending' && (!approvalId || a.approvalId === approvalId));
    if (found) return found;
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** The update events of a run: a refused update leaves none. */
async function updateEvents(workflowId: string): Promise<number> {
  return (await historyOf(stack, workflowId)).filter((e) => e.workflowExecutionUpdateAcceptedEventAttributes || e.workflowExecutionUpdateAdmittedEventAttributes).length;
}

const script: ScriptInput = {
  rules: [
    planReply([{ id: 'w', title: 'Write', instructions: 'Write two files', role: 'writer' }]),
    { match: { purpose: 'act', turn: 0 }, reply: toolCall('workspace.write', { path: 'a.md', content: '# A' }) },
    { match: { purpose: 'act', turn: 1 }, reply: toolCall('workspace.write', { path: 'b.md', content: '# B' }) },
    { match: { purpose: 'act' }, reply: { text: 'done' } },
  ],
};

test('a plaintext decideApproval from the temporal CLI (seen) and forged or altered signatures are refused; a signed decision through MARE and the codec server counts', async () => {
  const taskId = 'forge';
  const workflowId = subtaskWorkflowId(taskId, 'w');
  const result = await stack.withWorker(script, async () => {
    await stack.client.submitTask({ taskId, goal: 'write two files' });
    const first = await pending(taskId);

    // The seen attack: a plaintext update through the Temporal CLI, "by" an admin.
    const forged = { approvalId: first.approvalId, decision: 'approve', reason: 'ok', by: 'admin@example.com' };
    const cliRun = await run(cli, ['workflow', 'update', 'execute', '--address', stack.env.address, '--workflow-id', workflowId, '--name', 'decideApproval', '--input', JSON.stringify(forged)]);
    expect(cliRun.code).not.toBe(0);
    // Refused by the update validator; its reason is encrypted for a caller without the keyring.
    expect(cliRun.out).toMatch(/unable to update workflow/);

    // Same class: a made-up signature, a signature by another keyring's approvers' key, and a
    // genuine signature on a decision whose "by" or verdict was changed afterwards.
    // A client that sends plaintext like the attacker, but reads the encrypted refusal, to show why.
    const sealing = new EncryptionCodec(keyring);
    const plaintextSender = new Client({
      connection: stack.env.connection,
      dataConverter: { ...mareDataConverter(undefined), payloadCodecs: [{ encode: (p) => Promise.resolve(p), decode: (p) => sealing.decode(p) }] },
    });
    const raw = plaintextSender.workflow.getHandle(workflowId);
    const attempts = [
      { ...forged, signature: { keyId: keyring.activeKeyId, signature: 'ab'.repeat(64) } },
      signApproval(keyringOf({ id: keyring.activeKeyId, key: newKey().key }), forged),
      { ...signApproval(keyring, { ...forged, by: 'mallory' }), by: 'admin@example.com' },
      { ...signApproval(keyring, { ...forged, decision: 'deny' }), decision: 'approve' },
    ];
    for (const attempt of attempts) {
      const refused = await raw.executeUpdate('decideApproval', { args: [attempt] }).then(
        () => undefined,
        (err: unknown) => err,
      );
      expect(refused).toBeInstanceOf(WorkflowUpdateFailedError);
      expect((refused as WorkflowUpdateFailedError).cause?.message).toMatch(/not signed|does not verify/);
    }
    expect(await updateEvents(workflowId)).toBe(0);
    expect((await stack.client.approvals(taskId)).find((a) => a.approvalId === first.approvalId)?.status).toBe('pending');

    // MARE's client signs with the keyring it encrypts with.
    await stack.client.decideApproval(taskId, { approvalId: first.approvalId, decision: 'approve', reason: 'looks right', by: 'alice' });

    // The Web UI path: the update's input goes through the codec server's /encode, which signs it.
    const second = await pending(taskId, `w-2`);
    const token = 'codec-token-for-the-test-0123456789';
    const server = createCodecServer({ keyring, token });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
    try {
      const plain = defaultPayloadConverter.toPayload({ approvalId: second.approvalId, decision: 'deny', reason: 'not b', by: 'carol' });
      const body = JSON.stringify({ payloads: [{ metadata: { encoding: Buffer.from(plain.metadata!.encoding!).toString('base64') }, data: Buffer.from(plain.data!).toString('base64') }] });
      const encoded = await post(server, '/encode', token, body);
      const sealed = { metadata: Object.fromEntries(Object.entries(encoded.payloads[0]!.metadata).map(([k, v]) => [k, Buffer.from(v, 'base64')])), data: Buffer.from(encoded.payloads[0]!.data, 'base64') };
      const [opened] = await new EncryptionCodec(keyring).decode([sealed]);
      const decision = defaultPayloadConverter.fromPayload<{ signature?: unknown; by?: string }>(opened!);
      expect(decision.signature).toBeDefined();
      expect(decision.by).toBe('carol');
      await stack.client.client.workflow.getHandle(workflowId).executeUpdate('decideApproval', { args: [decision] });
    } finally {
      server.close();
    }
    return stack.client.result(taskId);
  });
  expect(result.subtasks[0]?.approvals?.map((a) => [a.status, a.decidedBy])).toEqual([
    ['approved', 'alice'],
    ['denied', 'carol'],
  ]);
  expect(await updateEvents(workflowId)).toBe(2);
});

function post(server: http.Server, path: string, token: string, body: string): Promise<{ payloads: { metadata: Record<string, string>; data: string }[] }> {
  const { port } = server.address() as AddressInfo;
  return new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port, path, method: 'POST', headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' } }, (res) => {
      let text = '';
      res.on('data', (d: Buffer) => (text += d.toString()));
      res.on('end', () => (res.statusCode === 200 ? resolve(JSON.parse(text)) : reject(new Error(`${res.statusCode}: ${text}`))));
    });
    req.on('error', reject);
    req.end(body);
  });
}
