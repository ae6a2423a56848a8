import { sign } from 'node:crypto';
import type { LeaseClaims } from '../../shared/leases.ts';
import type { SigningKey } from './keys.ts';

const b64 = (s: string) => Buffer.from(s).toString('base64url');
const headers = new Map<string, string>();

/**
 * Signs a lease as a compact JWS (alg EdDSA, kid in the header). node:crypto signs Ed25519
 * directly, about three times faster than going through jose (PITFALLS.md); the agent verifies
 * with jose, so the format is checked against the library on every run of the tests.
 */
export function signLease(key: SigningKey, claims: LeaseClaims): string {
  let header = headers.get(key.kid);
  if (!header) headers.set(key.kid, (header = b64(JSON.stringify({ alg: 'EdDSA', kid: key.kid, typ: 'JWT' }))));
  const input = `${header}.${b64(JSON.stringify(claims))}`;
  return `${input}.${sign(null, Buffer.from(input), key.privateKey).toString('base64url')}`;
}

export interface LeaseFacts {
  issuer: string;
  nodeId: string;
  jobId: string;
  leaseId: string;
  epoch: number;
  gpuIds: string[];
  cpuMillis: number;
  memoryMb: number;
  specDigest: string;
  /** For a task of a job array: its index and the array's count. */
  task?: { index: number; count: number } | null;
  issuedAt: Date;
  expiresAt: Date;
}

/** The claims DESIGN.md names, from what the database says about the lease. */
export function leaseClaims(f: LeaseFacts): LeaseClaims {
  return {
    iss: f.issuer,
    aud: f.nodeId,
    sub: f.jobId,
    jti: f.leaseId,
    iat: Math.floor(f.issuedAt.getTime() / 1000),
    exp: Math.floor(f.expiresAt.getTime() / 1000),
    epoch: f.epoch,
    gpus: f.gpuIds,
    res: { cpuMillis: f.cpuMillis, memoryMb: f.memoryMb },
    spec: f.specDigest,
    ...(f.task ? { task: f.task } : {}),
  };
}

/** Re-sign when less than half of a lease TTL is left on the token the agent holds. */
export function tokenNeedsRenewal(tokenExpiresAt: Date | null, now: Date, leaseTtlSeconds: number): boolean {
  return !tokenExpiresAt || tokenExpiresAt.getTime() - now.getTime() < (leaseTtlSeconds * 1000) / 2;
}
