import { ed25519 } from '@noble/curves/ed25519';
import { hexToBytes, utf8ToBytes } from '@noble/hashes/utils';

/**
 * Signed approval decisions. With a payload keyring configured, a decision is valid only when it
 * carries an Ed25519 signature by an approvers' key derived from that keyring (workers/approvalSigning.ts):
 * what MARE's client, the HTTP API and the codec server hold, and a stranger who can reach Temporal
 * does not. The workflow's update validator verifies it against the public keys the run pinned at
 * its first escalation. Pure and deterministic (no I/O, no randomness): workflow code uses it.
 */

/** The signature on a decision: by which approvers' key (the payload key id it derives from), hex Ed25519. */
export interface ApprovalSignature {
  keyId: string;
  signature: string;
}

/** What a signature covers: the decision's fields, in a fixed order. */
export interface SignedDecisionFields {
  approvalId: string;
  decision: string;
  reason: string;
  by?: string;
}

/** The bytes an approvers' key signs for a decision. */
export function approvalMessage(d: SignedDecisionFields): Uint8Array {
  return utf8ToBytes(`mare-approval/v1\n${JSON.stringify([d.approvalId, d.decision, d.by ?? '', d.reason])}`);
}

/** Why a decision's signature does not hold under `publicKeys` (key id → hex public key), or undefined when it does. */
export function approvalSignatureError(d: SignedDecisionFields & { signature?: unknown }, publicKeys: Readonly<Record<string, string>>): string | undefined {
  const sig = d.signature as Partial<ApprovalSignature> | undefined;
  if (!sig || typeof sig !== 'object' || typeof sig.keyId !== 'string' || typeof sig.signature !== 'string') {
    return 'the decision is not signed by an approver: decide through MARE (mare approvals decide, the HTTP API, or the Web UI with the codec server), which signs it with the approvers\' key';
  }
  const key = Object.hasOwn(publicKeys, sig.keyId) ? publicKeys[sig.keyId] : undefined;
  if (!key) return `the decision is signed with key "${sig.keyId}", which is not an approvers' key of this run`;
  if (!/^[0-9a-f]{128}$/.test(sig.signature)) return 'the decision\'s signature is malformed';
  try {
    if (ed25519.verify(hexToBytes(sig.signature), approvalMessage(d), hexToBytes(key))) return undefined;
  } catch {
    // a malformed point or key verifies as false
  }
  return 'the decision\'s signature does not verify: it was changed after signing, or signed with another key';
}
