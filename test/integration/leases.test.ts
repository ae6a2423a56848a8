import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { generateKeyPairSync } from 'node:crypto';
import { eq } from 'drizzle-orm';
import { SignJWT, type JSONWebKeySet } from 'jose';
import { gpus, jobs, nodes, signingKeys } from '../../coordinator/db/schema/index.ts';
import { signLease } from '../../coordinator/leases/tokens.ts';
import { specDigest } from '../../shared/digest.ts';
import { ApiRequestError } from '../../shared/client.ts';
import type { Job } from '../../shared/jobs.ts';
import type { LeaseClaims, LeaseGrant, LeaseHeartbeatExtras, Work } from '../../shared/leases.ts';
import type { MeteredUsage } from '../../shared/pool.ts';
import { LeaseRefused, LeaseVerifier } from '../../provider-agent/leases/verify.ts';
import { dbSkipReason, startHarness, type Harness } from '../support/harness.ts';
import { insertNode, insertProvider, jobSpec, type TestAgent } from '../support/factories.ts';

// Lease tokens as the agent checks them, the JWKS and key rotation, and the agent's reports
// fenced by node and epoch.

describe.skipIf(dbSkipReason)('leases', () => {
  let h: Harness;
  let client: Awaited<ReturnType<Harness['newAccount']>>;
  const db = () => h.coordinator.deps.database.db;
  const issuer = () => h.coordinator.deps.config.name;
  const node = async (over: Partial<Parameters<typeof insertNode>[1]> = {}) =>
    insertNode(db(), { accountId: await insertProvider(db()), gpus: [{ model: 'NVIDIA L4' }, { model: 'NVIDIA L4' }], pricePerGpuHour: 3.6, pricePerCpuHour: 0.36, ...over }, { audience: issuer(), baseUrl: h.url });
  const verifierFor = (a: TestAgent, now?: () => Date) =>
    new LeaseVerifier({ issuer: issuer(), nodeId: a.nodeId, fetchJwks: () => h.client().get<JSONWebKeySet>('/.well-known/jwks.json'), ...(now ? { now } : {}) });
  /** Submits a job and waits for its lease through the node's long-poll. */
  async function leased(a: TestAgent, over: Record<string, unknown> = {}, res: Record<string, unknown> = { gpus: 1 }): Promise<LeaseGrant> {
    const job = await client.api.post<Job>('/v1/jobs', jobSpec(over, res));
    const deadline = Date.now() + 10_000;
    while (Date.now() < deadline) {
      const work = await a.api.get<Work>('/v1/agent/work?wait=5');
      const grant = work.leases.find((l) => l.jobId === job.id);
      if (grant) return grant;
    }
    throw new Error('no lease came');
  }
  const refusal = (p: Promise<unknown>) => p.then(() => 'verified', (e) => (e instanceof LeaseRefused ? e.message : `other: ${String(e)}`));

  beforeAll(async () => {
    h = await startHarness({ GANTRY_NAME: 'gantry-test', GANTRY_LEASE_TTL_SECONDS: '120' });
  });
  afterAll(async () => h?.close());
  beforeEach(async () => {
    await db().update(nodes).set({ status: 'offline' });
    client = await h.newAccount('client');
  });

  it('signs a lease the agent verifies, with the claims DESIGN.md lists', async () => {
    const a = await node();
    const grant = await leased(a, {}, { gpus: 2, cpu: 2, memoryMb: 1024 });
    const claims = await verifierFor(a).verify(grant);
    const [row] = await db().select().from(jobs).where(eq(jobs.id, grant.jobId));
    expect(claims).toMatchObject({
      iss: 'gantry-test',
      aud: a.nodeId,
      sub: grant.jobId,
      jti: row!.leaseId,
      epoch: 1,
      gpus: row!.gpuIds,
      res: { cpuMillis: 2000, memoryMb: 1024 },
      spec: specDigest(row!.spec),
    });
    expect(claims.exp).toBe(Math.floor(row!.leaseExpiresAt!.getTime() / 1000));
    expect(claims.exp - claims.iat).toBeGreaterThan(100);
    expect(claims.exp - claims.iat).toBeLessThanOrEqual(120);
    const header = JSON.parse(Buffer.from(grant.token.split('.')[0]!, 'base64url').toString());
    expect(header.alg).toBe('EdDSA');
    const jwks = await h.client().get<JSONWebKeySet>('/.well-known/jwks.json');
    expect(jwks.keys.map((k) => k.kid)).toContain(header.kid);
    expect(jwks.keys.every((k) => !('d' in k))).toBe(true);
  });

  it('refuses leases signed by another key, with alg none or HS256, expired, for another node, or for a changed spec', async () => {
    const a = await node();
    const b = await node();
    const grant = await leased(a);
    const v = verifierFor(a);
    const claims = await v.verify(grant);
    const b64 = (o: unknown) => Buffer.from(JSON.stringify(o)).toString('base64url');

    const { privateKey } = generateKeyPairSync('ed25519');
    const [kid] = (await h.client().get<JSONWebKeySet>('/.well-known/jwks.json')).keys.map((k) => k.kid!);
    const forged = signLease({ kid: kid!, privateKey, publicJwk: {} }, claims);
    expect(await refusal(v.verify({ ...grant, token: forged }))).toBe("the lease's signature does not verify");
    const strangerKid = signLease({ kid: 'someone-else', privateKey, publicJwk: {} }, claims);
    expect(await refusal(v.verify({ ...grant, token: strangerKid }))).toBe("the lease is not signed by any of the coordinator's keys");

    const none = `${b64({ alg: 'none', typ: 'JWT' })}.${b64(claims)}.`;
    expect(await refusal(v.verify({ ...grant, token: none }))).toBe('the lease is not signed with EdDSA');
    const hs = await new SignJWT({ ...claims }).setProtectedHeader({ alg: 'HS256', kid }).sign(new TextEncoder().encode('a shared secret of enough length!!'));
    expect(await refusal(v.verify({ ...grant, token: hs }))).toBe('the lease is not signed with EdDSA');

    const later = verifierFor(a, () => new Date((claims.exp + 60) * 1000));
    expect(await refusal(later.verify(grant))).toBe('the lease expired');

    expect(await refusal(verifierFor(b).verify(grant))).toBe('the lease is for another node');
    const wrongIssuer = new LeaseVerifier({ issuer: 'another-coordinator', nodeId: a.nodeId, fetchJwks: () => h.client().get('/.well-known/jwks.json') });
    expect(await refusal(wrongIssuer.verify(grant))).toBe('the lease is from another coordinator');

    const changed = { ...grant, spec: { ...grant.spec, command: ['rm', '-rf', '/'] } };
    expect(await refusal(v.verify(changed))).toBe('the job spec does not match the digest the lease was signed for');
    const moreGpus = { ...grant, gpus: [...grant.gpus, { ...grant.gpus[0]!, id: 'GPU-extra' }] };
    expect(await refusal(v.verify(moreGpus))).toBe('the GPUs named do not match the ones the lease was signed for');
    expect(await refusal(v.verify({ ...grant, epoch: grant.epoch + 1 }))).toBe(`the lease is for epoch ${grant.epoch}, not ${grant.epoch + 1}`);
    // And the genuine one still passes.
    expect(await refusal(v.verify(grant))).toBe('verified');
  });

  it('rotates keys without invalidating leases in flight, and retires old keys later', async () => {
    const a = await node();
    const before = await leased(a);
    const keys = h.coordinator.deps.leases.keys;
    const oldKid = keys.current().kid;
    const fresh = await keys.rotate();
    expect(fresh.kid).not.toBe(oldKid);
    expect(keys.current().kid).toBe(fresh.kid);
    const jwks = await h.client().get<JSONWebKeySet>('/.well-known/jwks.json');
    expect(jwks.keys.map((k) => k.kid)).toEqual(expect.arrayContaining([oldKid, fresh.kid]));
    // An agent that fetched the JWKS before the rotation still verifies both old and new leases.
    const v = verifierFor(a);
    await v.verify(before);
    const after = await leased(a);
    expect(JSON.parse(Buffer.from(after.token.split('.')[0]!, 'base64url').toString()).kid).toBe(fresh.kid);
    await v.verify(after);
    // Two TTLs after its successor came, the old key is retired and leaves the JWKS.
    await db().update(signingKeys).set({ createdAt: new Date(Date.now() - 20 * 60_000) }).where(eq(signingKeys.kid, oldKid));
    await db().update(signingKeys).set({ createdAt: new Date(Date.now() - 10 * 60_000) }).where(eq(signingKeys.kid, fresh.kid));
    expect(await keys.retireSuperseded(new Date())).toBeGreaterThanOrEqual(1);
    await keys.reload();
    const now = await h.client().get<JSONWebKeySet>('/.well-known/jwks.json');
    expect(now.keys.map((k) => k.kid)).not.toContain(oldKid);
    expect(now.keys.map((k) => k.kid)).toContain(fresh.kid);
  });

  it('takes reports only from the holding node at the current epoch, and meters usage at the prices recorded', async () => {
    const a = await node();
    const b = await node();
    const grant = await leased(a, {}, { gpus: 1, cpu: 2, memoryMb: 2048 });
    const path = `/v1/agent/jobs/${grant.jobId}`;
    const status = (p: Promise<unknown>) => p.then(() => 200, (e: ApiRequestError) => `${e.status} ${e.problem?.code}`);
    expect(await status(b.api.post(`${path}/running`, { epoch: grant.epoch }))).toBe('404 not_found');
    // No oracle: a wrong epoch on another node's job is the same 404, saying nothing of the lease.
    for (const route of ['running', 'finish']) {
      const body = route === 'running' ? { epoch: grant.epoch + 7 } : { epoch: grant.epoch + 7, reason: 'succeeded' };
      const wrong = await b.api.post(`${path}/${route}`, body).catch((e: ApiRequestError) => e);
      expect(wrong, route).toBeInstanceOf(ApiRequestError);
      expect(`${(wrong as ApiRequestError).status} ${(wrong as ApiRequestError).problem?.code}`, route).toBe('404 not_found');
      expect((wrong as ApiRequestError).problem?.detail, route).not.toMatch(/epoch|\d/);
    }
    expect(await status(a.api.post(`${path}/running`, { epoch: grant.epoch + 1 }))).toBe('409 stale_lease');
    expect((await db().select().from(jobs).where(eq(jobs.id, grant.jobId)))[0]!.status).toBe('leased');
    expect(await status(a.api.post(`${path}/running`, { epoch: grant.epoch }))).toBe(200);
    expect(await status(b.api.post(`${path}/finish`, { epoch: grant.epoch, reason: 'succeeded', exitCode: 0 }))).toBe('404 not_found');
    // Lease start an hour ago: one GPU at 3.60 + 2 cores at 0.36 for one hour = 4.32. A lease from
    // before the ledger (no hold): a held one never bills past its hold (test/integration/ledger.test.ts).
    const leasedAt = new Date(Date.now() - 3600_000);
    await db().update(jobs).set({ leasedAt, holdId: null, holdMicros: null, heldUntil: null, billAt: null, leaseBilledMicros: null }).where(eq(jobs.id, grant.jobId));
    const answer = await a.api.post<{ status: string; epoch: number }>(`${path}/finish`, { epoch: grant.epoch, reason: 'succeeded', exitCode: 0, usage: { wallSeconds: 3599 } });
    expect(answer).toMatchObject({ status: 'succeeded', epoch: grant.epoch + 1 });
    const [row] = await db().select().from(jobs).where(eq(jobs.id, grant.jobId));
    expect(row!.exitCode).toBe(0);
    expect(row!.costMicros! / 1e6).toBeCloseTo(4.32, 2);
    const usage = row!.usage as MeteredUsage;
    expect(usage.seconds).toBeGreaterThanOrEqual(3600);
    expect(Object.keys(usage.gpuSeconds)).toEqual(['NVIDIA L4']);
    expect(usage.cpuCoreSeconds).toBeCloseTo(usage.seconds * 2, 0);
    expect(usage.memoryMbSeconds).toBeCloseTo(usage.seconds * 2048, -2);
    // Capacity came back, and a retried report is stale.
    const [n] = await db().select().from(nodes).where(eq(nodes.id, a.nodeId));
    expect([n!.allocatedCpuMillis, n!.allocatedMemoryMb, n!.jobsSucceeded]).toEqual([0, 0, 1]);
    expect(await db().select().from(gpus).where(eq(gpus.jobId, grant.jobId))).toEqual([]);
    expect(await status(a.api.post(`${path}/finish`, { epoch: grant.epoch, reason: 'succeeded', exitCode: 0 }))).toBe('409 stale_lease');
  });

  it('ends a failure failed unless the spec retries on it, and a cancelled job cancelled', async () => {
    const a = await node();
    const g1 = await leased(a, { retryOn: ['oom'] });
    await a.api.post(`/v1/agent/jobs/${g1.jobId}/finish`, { epoch: g1.epoch, reason: 'oom', exitCode: 137 });
    const requeued = await client.api.get<Job>(`/v1/jobs/${g1.jobId}`);
    expect(requeued.status === 'queued' || requeued.leaseEpoch > g1.epoch).toBe(true);
    expect(requeued.leaseEpoch).toBeGreaterThan(g1.epoch);

    const g2 = await leased(a);
    await a.api.post(`/v1/agent/jobs/${g2.jobId}/finish`, { epoch: g2.epoch, reason: 'nonzero-exit', exitCode: 3 });
    expect(await client.api.get<Job>(`/v1/jobs/${g2.jobId}`)).toMatchObject({ status: 'failed', exitCode: 3, error: 'exited 3' });

    const g3 = await leased(a);
    await client.api.post(`/v1/jobs/${g3.jobId}/cancel`);
    const hb = await h.coordinator.deps.database.db.transaction((tx) =>
      h.coordinator.deps.leases.onHeartbeat(tx, a.nodeId, { jobs: [{ jobId: g3.jobId, epoch: g3.epoch }] }, new Date()),
    );
    expect((hb as LeaseHeartbeatExtras).cancel).toEqual([{ jobId: g3.jobId, epoch: g3.epoch }]);
    await a.api.post(`/v1/agent/jobs/${g3.jobId}/finish`, { epoch: g3.epoch, reason: 'nonzero-exit', exitCode: 143 });
    expect((await client.api.get<Job>(`/v1/jobs/${g3.jobId}`)).status).toBe('cancelled');
  });

  it('renews leases on heartbeats, re-signing only near the end, and revokes what the node no longer holds', async () => {
    // Free work: a priced lease is never renewed past what its hold covers (test/integration/ledger.test.ts).
    const a = await node({ pricePerGpuHour: 0, pricePerCpuHour: 0 });
    const grant = await leased(a);
    const leases = h.coordinator.deps.leases;
    const beat = (at: Date, jobsHeld: { jobId: string; epoch: number }[]) =>
      db().transaction((tx) => leases.onHeartbeat(tx, a.nodeId, { jobs: jobsHeld }, at)) as Promise<LeaseHeartbeatExtras>;
    const soon = new Date(Date.now() + 5_000);
    const first = await beat(soon, [{ jobId: grant.jobId, epoch: grant.epoch }, { jobId: 'job_00000000000000000000zz', epoch: 4 }]);
    expect(first.leases).toHaveLength(1);
    expect(first.leases[0]!.token).toBeUndefined();
    expect(new Date(first.leases[0]!.expiresAt).getTime()).toBe(soon.getTime() + 120_000);
    expect(first.revoked).toEqual([{ jobId: 'job_00000000000000000000zz', epoch: 4 }]);
    expect(first.draining).toBe(false);
    // Past half of the token's life, a fresh token comes, with the renewed expiry.
    const late = new Date(Date.now() + 90_000);
    const second = await beat(late, [{ jobId: grant.jobId, epoch: grant.epoch }]);
    const token = second.leases[0]!.token!;
    const claims = JSON.parse(Buffer.from(token.split('.')[1]!, 'base64url').toString()) as LeaseClaims;
    expect(claims.exp).toBe(Math.floor((late.getTime() + 120_000) / 1000));
    await verifierFor(a, () => late).verifyRenewal(token, grant.jobId, grant.epoch);
    const third = await beat(new Date(late.getTime() + 5_000), [{ jobId: grant.jobId, epoch: grant.epoch }]);
    expect(third.leases[0]!.token).toBeUndefined();
    // A stale epoch is revoked, not renewed.
    const stale = await beat(new Date(), [{ jobId: grant.jobId, epoch: grant.epoch - 1 }]);
    expect(stale.leases).toEqual([]);
    expect(stale.revoked).toEqual([{ jobId: grant.jobId, epoch: grant.epoch - 1 }]);
  });

  it('expires a lease nobody renews: re-queued with the capacity freed, failed when attempts are used, cancelled when asked', async () => {
    const a = await node({ gpus: [{ model: 'NVIDIA L4' }] });
    const grant = await leased(a, { maxAttempts: 2 });
    const sweeper = h.coordinator.deps;
    void sweeper;
    const { expireLease } = await import('../../coordinator/jobs/transitions.ts');
    const later = new Date(Date.now() + 200_000);
    const ended = await db().transaction((tx) => expireLease(tx, grant.jobId, later));
    expect(ended).toMatchObject({ status: 'queued', leaseEpoch: grant.epoch + 1, nodeId: null });
    const [n] = await db().select().from(nodes).where(eq(nodes.id, a.nodeId));
    expect([n!.allocatedCpuMillis, n!.leaseExpiries]).toEqual([0, 1]);
    // Its second placement, expired too: no attempt left.
    const again = await (async () => {
      for (let i = 0; i < 100; i++) {
        const [row] = await db().select().from(jobs).where(eq(jobs.id, grant.jobId));
        if (row!.status === 'leased') return row!;
        await h.coordinator.deps.scheduler.runPass();
      }
      throw new Error('not placed again');
    })();
    expect(again.attempts).toBe(2);
    const last = await db().transaction((tx) => expireLease(tx, grant.jobId, new Date(Date.now() + 400_000)));
    expect(last).toMatchObject({ status: 'failed' });
    expect(last!.error).toContain('all 2 attempts used');

    const g2 = await leased(a);
    await client.api.post(`/v1/jobs/${g2.jobId}/cancel`);
    const cancelled = await db().transaction((tx) => expireLease(tx, g2.jobId, new Date(Date.now() + 200_000)));
    expect(cancelled!.status).toBe('cancelled');
  });
});

describe.skipIf(dbSkipReason)('the work long-poll and the lease TTL', () => {
  let h: Harness;
  beforeAll(async () => {
    h = await startHarness({ GANTRY_NAME: 'gantry-test', GANTRY_LEASE_TTL_SECONDS: '15' });
  });
  afterAll(async () => h?.close());

  it('answers within a third of the lease TTL, whatever wait the agent asked for', async () => {
    const db = h.coordinator.deps.database.db;
    const a = await insertNode(db, { accountId: await insertProvider(db), gpus: [{ model: 'NVIDIA L4' }] }, { audience: h.coordinator.deps.config.name, baseUrl: h.url });
    const started = Date.now();
    const work = await a.api.get<Work>('/v1/agent/work?wait=30', { timeoutMs: 40_000 });
    const tookMs = Date.now() - started;
    expect(work.leases).toEqual([]);
    // TTL 15 s: answered after 5 s, not 30.
    expect(tookMs).toBeGreaterThanOrEqual(4_500);
    expect(tookMs).toBeLessThan(8_000);
  });
});
