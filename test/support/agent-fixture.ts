// A node and a job leased to it, written straight into the test's database, for the tests of
// the routes an agent calls with its lease (logs, inputs, outputs) without a scheduler pass.
import { eq } from 'drizzle-orm';
import { exportJWK, generateKeyPair, SignJWT } from 'jose';
import { nodes, jobs } from '../../coordinator/db/schema/index.ts';
import { newId } from '../../shared/ids.ts';
import type { Harness } from './harness.ts';

export interface TestNode {
  nodeId: string;
  /** A fresh agent token (EdDSA, sub = node, aud = the coordinator's name). */
  token(): Promise<string>;
  /** fetch as this agent. */
  fetch(path: string, init?: RequestInit): Promise<Response>;
}

export async function createTestNode(h: Harness, providerAccountId: string): Promise<TestNode> {
  const { publicKey, privateKey } = await generateKeyPair('EdDSA', { crv: 'Ed25519', extractable: true });
  const nodeId = newId('node');
  await h.coordinator.deps.database.db.insert(nodes).values({
    id: nodeId,
    accountId: providerAccountId,
    name: `node-${nodeId.slice(-6)}`,
    status: 'online',
    publicKey: (await exportJWK(publicKey)) as Record<string, string>,
    cpuMillis: 8000,
    memoryMb: 16384,
    diskMb: 500_000,
  });
  const audience = h.coordinator.deps.config.name;
  const token = () =>
    new SignJWT({})
      .setProtectedHeader({ alg: 'EdDSA' })
      .setSubject(nodeId)
      .setAudience(audience)
      .setIssuedAt()
      .setExpirationTime('50s')
      .sign(privateKey);
  return {
    nodeId,
    token,
    async fetch(path, init = {}) {
      const headers = new Headers(init.headers);
      headers.set('authorization', `Bearer ${await token()}`);
      return fetch(new URL(path, h.url), { ...init, headers });
    },
  };
}

/** Puts a queued job onto the node as the scheduler would (status, node, epoch). */
export async function leaseTo(h: Harness, jobId: string, nodeId: string, status: 'leased' | 'running' = 'running', epoch = 1) {
  await h.coordinator.deps.database.db
    .update(jobs)
    .set({ status, nodeId, leaseEpoch: epoch, leasedAt: new Date() })
    .where(eq(jobs.id, jobId));
}

export async function setStatus(h: Harness, jobId: string, status: 'succeeded' | 'failed' | 'cancelled' | 'queued', patch: { exitCode?: number } = {}) {
  await h.coordinator.deps.database.db.update(jobs).set({ status, ...patch }).where(eq(jobs.id, jobId));
}
