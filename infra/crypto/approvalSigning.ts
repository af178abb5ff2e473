import { ed25519 } from '@noble/curves/ed25519';
import { hkdf } from '@noble/hashes/hkdf';
import { sha256 } from '@noble/hashes/sha2';
import { bytesToHex } from '@noble/hashes/utils';
import type { Keyring } from './keyring';
import { approvalMessage, type ApprovalSignature, type SignedDecisionFields } from '../../core/approvalSignature';

/**
 * The approvers' keys: one Ed25519 key pair per payload key, derived with HKDF, so whoever holds the
 * payload keyring (MARE's client, the HTTP API, the codec server) can sign approval decisions and
 * workers can publish the public halves for runs to pin. Nothing new to distribute or rotate.
 */
function seedOf(key: Uint8Array): Uint8Array {
  return hkdf(sha256, key, 'mare', 'approval-signing/v1', 32);
}

/** The approvers' public keys of a payload keyring: key id → hex Ed25519 public key. */
export function approverPublicKeys(keyring: Keyring): Record<string, string> {
  return Object.fromEntries([...keyring.keys].map(([id, key]) => [id, bytesToHex(ed25519.getPublicKey(seedOf(key)))]));
}

/** Signs a decision with the approvers' key of the keyring's active payload key. */
export function signApproval<D extends SignedDecisionFields>(keyring: Keyring, decision: D): D & { signature: ApprovalSignature } {
  const keyId = keyring.activeKeyId;
  const signature = bytesToHex(ed25519.sign(approvalMessage(decision), seedOf(keyring.keys.get(keyId)!)));
  return { ...decision, signature: { keyId, signature } };
}
