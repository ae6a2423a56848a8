import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { eq } from 'drizzle-orm';
import { jobs, nodes } from '../../coordinator/db/schema/index.ts';
import { submitJob } from '../../coordinator/jobs/lifecycle.ts';
import { expireLease, finishJob, leaseJobs, type Placement } from '../../coordinator/jobs/transitions.ts';
import { firstHold } from '../../coordinator/ledger/leases.ts';
import { silentLogger } from '../../coordinator/log.ts';
import { schedulePass } from '../../coordinator/scheduler/placement.ts';
import { endLeaseOnNode } from '../../coordinator/jobs/transitions.ts';
import { ApiRequestError } from '../../shared/client.ts';
import { newId } from '../../shared/ids.ts';
import { JobSpec, type Job } from '../../shared/jobs.ts';
import type { Balance, Ledger, TransferResult } from '../../shared/ledger.ts';
import type { DryRun } from '../../shared/pool.ts';
import { insertNode, jobSpec } from '../support/factories.ts';
import { dbSkipReason, startHarness, type Harness } from '../support/harness.ts';
import { LedgerChecker } from '../support/ledger-invariants.ts';

// Credits, holds and the ledger through the API, and the lease's money through the domain code
// with explicit times (deposits, the hold a grant takes, the wait for credit, billing periods, the
// end of a lease, running out of credit, node loss, earnings per node).

const ttl = 300;
const billing = { periodSeconds: 150, feeBasisPoints: 1000 };

describe.skipIf(dbSkipReason)('ledger', () => {
  let h: Harness;
  const db = () => h.coordinator.deps.database.db;
  const database = () => h.coordinator.deps.database;
  const status = (p: Promise<unknown>) => p.then(() => 200, (e) => (e instanceof ApiRequestError ? e.status : String(e)));
  const money = async (key: string) => h.client(key).get<Balance>('/v1/balance');
  /** A pass at an explicit time (the harness's own loop only ticks every 10 minutes here). */
  const pass = (at: number) =>
    schedulePass({ database: database(), clock: { now: () => new Date(at) }, log: silentLogger, leaseTtlSeconds: ttl, batchSize: 100, full: true, billing });
  const renew = (nodeId: string, jobId: string, epoch: number, at: number) =>
    db().transaction((tx) => h.coordinator.deps.leases.renew(tx, nodeId, [{ jobId, epoch }], new Date(at)));
  const row = async (id: string) => (await db().select().from(jobs).where(eq(jobs.id, id)))[0]!;

  beforeAll(async () => {
    h = await startHarness({ GANTRY_LEASE_TTL_SECONDS: String(ttl), GANTRY_SCHEDULER_TICK_MS: '600000', GANTRY_FEE_PERCENT: '10' });
  });
  afterAll(async () => h?.close());
  beforeEach(async () => {
    // Each test places its own jobs on its own nodes only.
    await db().update(nodes).set({ status: 'offline' });
    await db().update(jobs).set({ status: 'cancelled' }).where(eq(jobs.status, 'queued'));
  });

  it('takes deposits once per reference, adjusts, pays out no more than is owed, and shows balances and lines', async () => {
    const client = await h.newAccount('client', undefined, { credit: 0 });
    const provider = await h.newAccount('provider');
    const first = await h.admin.post<TransferResult>(`/v1/accounts/${client.accountId}/credits`, { amount: 5.25, reference: 'inv-1' });
    expect(first).toMatchObject({ replayed: false, balance: { client: { balance: 5.25, held: 0, available: 5.25 } } });
    const again = await h.admin.post<TransferResult>(`/v1/accounts/${client.accountId}/credits`, { amount: 5.25, reference: 'inv-1' });
    expect(again).toMatchObject({ replayed: true, transferId: first.transferId, balance: { client: { balance: 5.25 } } });
    // The same reference for another amount, a client's own key, a provider's account, a bad amount.
    expect(await status(h.admin.post(`/v1/accounts/${client.accountId}/credits`, { amount: 7, reference: 'inv-1' }))).toBe(409);
    expect(await status(client.api.post(`/v1/accounts/${client.accountId}/credits`, { amount: 1, reference: 'self' }))).toBe(403);
    expect(await status(h.admin.post(`/v1/accounts/${provider.accountId}/credits`, { amount: 1, reference: 'p' }))).toBe(400);
    expect(await status(h.admin.post(`/v1/accounts/${client.accountId}/credits`, { amount: 0.0000001, reference: 'tiny' }))).toBe(400);
    expect(await status(h.admin.post(`/v1/accounts/${client.accountId}/credits`, { amount: -1, reference: 'neg' }))).toBe(400);

    await h.admin.post(`/v1/accounts/${client.accountId}/adjustments`, { amount: -0.25, reason: 'double-charged refund reversed', reference: 'adj-1' });
    expect((await money(client.key)).client).toEqual({ balance: 5, held: 0, available: 5, creditLimit: 0 });
    // Taking it below zero is refused; a credit limit lets it go that far.
    expect(await status(h.admin.post(`/v1/accounts/${client.accountId}/adjustments`, { amount: -6, reason: 'x', reference: 'adj-2' }))).toBe(409);
    const put = await h.fetch(`/v1/accounts/${client.accountId}/credit-limit`, {
      method: 'PUT',
      key: h.coordinator.adminKey!,
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ limit: 2 }),
    });
    expect(put.status).toBe(200);
    await h.admin.post(`/v1/accounts/${client.accountId}/adjustments`, { amount: -6, reason: 'x', reference: 'adj-3' });
    expect((await money(client.key)).client).toEqual({ balance: -1, held: 0, available: 1, creditLimit: 2 });

    // A provider is paid no more than it is owed (nothing yet).
    expect(await status(h.admin.post(`/v1/accounts/${provider.accountId}/payouts`, { amount: 1, reference: 'po-1' }))).toBe(409);
    expect(await money(provider.key)).toEqual({ accountId: provider.accountId, client: null, provider: { earned: 0, paidOut: 0, payable: 0 } });

    const lines = await client.api.get<Ledger>('/v1/ledger');
    expect(lines.items.map((l) => [l.code, l.amount])).toEqual([
      ['deposit', 5.25],
      ['adjustment', -0.25],
      ['adjustment', -6],
    ]);
    const none = await client.api.get<Ledger>(`/v1/ledger?until=${encodeURIComponent(new Date(Date.now() - 3_600_000).toISOString())}`);
    expect(none.items).toEqual([]);
    // Another tenant's lines are not in a statement.
    expect((await provider.api.get<Ledger>('/v1/ledger')).items).toEqual([]);
  });

  it('holds credit for a lease, keeps a job without enough credit queued with the reason (the dry run says the same), and needs none for free work', async () => {
    const client = await h.newAccount('client', undefined, { credit: 0.05 });
    const provider = await h.newAccount('provider');
    const priced = await insertNode(db(), { accountId: provider.accountId, gpus: [{ model: 'NVIDIA L4' }], pricePerGpuHour: 1.2, cpu: 4 }, { audience: h.coordinator.deps.config.name });
    const spec = jobSpec({ constraints: { nodeId: priced.nodeId } }, { gpus: 1, cpu: 1 });
    const reason = 'needs 0.10 of credit for its first 5 minutes at 1.20/hour, 0.05 available';
    const dry = await client.api.post<DryRun>('/v1/jobs/dry-run', spec);
    expect(dry.credit).toEqual({ needed: 0.1, available: 0.05, fits: false, detail: reason });
    const job = await client.api.post<Job>('/v1/jobs', spec);
    await h.coordinator.deps.scheduler.idle();
    await pass(Date.now());
    expect(await client.api.get<Job>(`/v1/jobs/${job.id}`)).toMatchObject({ status: 'queued', pendingReason: reason });

    await h.admin.post(`/v1/accounts/${client.accountId}/credits`, { amount: 0.05, reference: 'top-up' });
    await pass(Date.now());
    expect((await client.api.get<Job>(`/v1/jobs/${job.id}`)).status).toBe('leased');
    expect((await money(client.key)).client).toEqual({ balance: 0.1, held: 0.1, available: 0, creditLimit: 0 });

    // Zero-priced work on a free node: no credit, no hold.
    const broke = await h.newAccount('client', undefined, { credit: 0 });
    const free = await insertNode(db(), { accountId: provider.accountId, cpu: 4 }, { audience: h.coordinator.deps.config.name });
    const freeJob = await broke.api.post<Job>('/v1/jobs', jobSpec({ constraints: { nodeId: free.nodeId } }));
    await h.coordinator.deps.scheduler.idle();
    await pass(Date.now());
    expect((await broke.api.get<Job>(`/v1/jobs/${freeJob.id}`)).status).toBe('leased');
    expect((await money(broke.key)).client).toEqual({ balance: 0, held: 0, available: 0, creditLimit: 0 });
  });

  it('grants exactly as many of 50 concurrent leases as the balance covers', async () => {
    const client = await h.newAccount('client', undefined, { credit: 1 });
    const provider = await h.newAccount('provider');
    const node = await insertNode(db(), { accountId: provider.accountId, cpu: 64, memoryMb: 64 * 1024, pricePerCpuHour: 1.2 }, { audience: h.coordinator.deps.config.name });
    const at = new Date();
    const spec = JobSpec.parse(jobSpec({}, { cpu: 1, memoryMb: 256 }));
    const queued = await Promise.all(Array.from({ length: 50 }, () => submitJob(db(), client.accountId, spec, undefined, at)));
    // Each lease holds 0.10 (1.20/hour for 5 minutes): 1.00 covers 10.
    const outcomes = await Promise.allSettled(
      queued.map(({ job }) => {
        const leaseId = newId('lease');
        const p: Placement = {
          jobId: job.id,
          nodeId: node.nodeId,
          gpuIds: [],
          leaseId,
          cpuMillis: 1000,
          memoryMb: 256,
          diskMb: job.diskMb,
          priceGpuHourMicros: 0,
          priceCpuHourMicros: 1_200_000,
        };
        const hold = firstHold({ leaseId, gpuCount: 0, cpuMillis: 1000, priceGpuHourMicros: 0, priceCpuHourMicros: 1_200_000, timeoutSeconds: 3600 }, at, { leaseTtlSeconds: ttl, ...billing });
        p.hold = { hold: hold!, clientId: client.accountId, providerId: provider.accountId };
        return db().transaction((tx) => leaseJobs(tx, [p], new Date(at.getTime() + ttl * 1000), at));
      }),
    );
    expect(outcomes.filter((o) => o.status === 'fulfilled')).toHaveLength(10);
    for (const o of outcomes) if (o.status === 'rejected') expect(String(o.reason)).toMatch(/credit|could not serialize|deadlock/);
    expect((await db().select({ id: jobs.id }).from(jobs).where(eq(jobs.status, 'leased'))).filter((j) => queued.some((q) => q.job.id === j.id))).toHaveLength(10);
    expect((await money(client.key)).client).toEqual({ balance: 1, held: 1, available: 0, creditLimit: 0 });
    await new LedgerChecker().check(database());
  });

  it('bills once per period, never extends a lease past what is held, and ends a job out of credit failed (credit), billed to its last heartbeat', async () => {
    // 1.20/hour is 0.10 per lease TTL of 5 minutes; 0.25 covers 12.5 minutes.
    const client = await h.newAccount('client', undefined, { credit: 0.25 });
    const provider = await h.newAccount('provider');
    const node = await insertNode(db(), { accountId: provider.accountId, gpus: [{ model: 'NVIDIA L4' }], pricePerGpuHour: 1.2 }, { audience: h.coordinator.deps.config.name });
    const t0 = Date.now() + 3_600_000;
    const { job } = await submitJob(db(), client.accountId, JobSpec.parse(jobSpec({ constraints: { nodeId: node.nodeId } }, { gpus: 1 })), undefined, new Date(t0));
    await pass(t0);
    const s = (sec: number) => t0 + sec * 1000;
    let j = await row(job.id);
    expect(j).toMatchObject({ status: 'leased', holdMicros: 100_000, heldUntil: new Date(s(300)) });
    // Within the period: renewed, not billed, and no further than what is held.
    let r = await renew(node.nodeId, job.id, j.leaseEpoch, s(60));
    expect(r.leases[0]!.expiresAt).toBe(new Date(s(300)).toISOString());
    expect((await money(client.key)).client).toMatchObject({ balance: 0.25, held: 0.1 });
    // Each period posts what was used and holds up to a TTL ahead.
    r = await renew(node.nodeId, job.id, j.leaseEpoch, s(150));
    expect(r.leases[0]!.expiresAt).toBe(new Date(s(450)).toISOString());
    expect((await money(client.key)).client).toMatchObject({ balance: 0.2, held: 0.1, available: 0.1 });
    await renew(node.nodeId, job.id, j.leaseEpoch, s(200)); // not due: nothing moves
    expect((await money(client.key)).client).toMatchObject({ balance: 0.2, held: 0.1 });
    r = await renew(node.nodeId, job.id, j.leaseEpoch, s(300));
    expect(r.leases[0]!.expiresAt).toBe(new Date(s(600)).toISOString());
    expect((await money(client.key)).client).toMatchObject({ balance: 0.15, held: 0.1, available: 0.05 });
    r = await renew(node.nodeId, job.id, j.leaseEpoch, s(450));
    expect(r.leases[0]!.expiresAt).toBe(new Date(s(750)).toISOString());
    expect((await money(client.key)).client).toMatchObject({ balance: 0.1, held: 0.1, available: 0 });
    // The next period cannot be held (0.10 needed, 0.05 would be left): nothing moves, the lease is not extended.
    r = await renew(node.nodeId, job.id, j.leaseEpoch, s(600));
    expect(r.leases[0]!.expiresAt).toBe(new Date(s(750)).toISOString());
    r = await renew(node.nodeId, job.id, j.leaseEpoch, s(700));
    expect(r.leases[0]!.expiresAt).toBe(new Date(s(750)).toISOString());
    expect((await row(job.id)).creditShortAt).not.toBeNull();
    expect((await money(client.key)).client).toMatchObject({ balance: 0.1, held: 0.1, available: 0 });
    // Its node stops it at the lease's end and says nothing: the expiry ends it failed, not queued.
    const ended = await db().transaction((tx) => expireLease(tx, job.id, new Date(s(760))));
    expect(ended).toMatchObject({ status: 'failed', error: expect.stringMatching(/^credit: /) });
    j = await row(job.id);
    // Billed to the last heartbeat (700 s at 1.20/hour = 0.233333).
    expect(j.costMicros).toBe(233_333);
    expect(j.holdId).toBeNull();
    expect((await money(client.key)).client).toEqual({ balance: 0.016667, held: 0, available: 0.016667, creditLimit: 0 });
    // The provider earned it less the platform's 10% (rounded down on each posting: 3 × 0.005 + 0.008333).
    const earned = (await money(provider.key)).provider!;
    expect(earned).toEqual({ earned: 0.21, paidOut: 0, payable: 0.21 });
    await h.admin.post(`/v1/accounts/${provider.accountId}/payouts`, { amount: 0.1, reference: 'po' });
    expect((await money(provider.key)).provider).toEqual({ earned: 0.21, paidOut: 0.1, payable: 0.11 });
    expect(await status(h.admin.post(`/v1/accounts/${provider.accountId}/payouts`, { amount: 0.2, reference: 'po-2' }))).toBe(409);
    const lines = await client.api.get<Ledger>(`/v1/ledger?since=${new Date(t0 - 1000).toISOString()}&until=${new Date(s(1000)).toISOString()}`);
    expect(lines.items.every((l) => l.jobId === job.id && l.nodeId === node.nodeId)).toBe(true);
    expect(lines.items.filter((l) => l.kind === 'post').reduce((a, l) => a + Math.round(-l.amount * 1e6), 0)).toBe(233_333);
    await new LedgerChecker().check(database());
  });

  it("bills each lease to the node that ran it: a node lost mid-job earns to its last heartbeat, the next node the rest", async () => {
    const client = await h.newAccount('client', undefined, { credit: 10 });
    const a = await h.newAccount('provider');
    const b = await h.newAccount('provider');
    const spec = JobSpec.parse(jobSpec({ maxAttempts: 2 }, { gpus: 1 }));
    const nodeA = await insertNode(db(), { accountId: a.accountId, gpus: [{ model: 'NVIDIA L4' }], pricePerGpuHour: 3.6 }, { audience: h.coordinator.deps.config.name });
    const t0 = Date.now() + 7_200_000;
    const s = (sec: number) => t0 + sec * 1000;
    const { job } = await submitJob(db(), client.accountId, spec, undefined, new Date(t0));
    await pass(t0);
    const onA = await row(job.id);
    expect(onA.nodeId).toBe(nodeA.nodeId);
    await renew(nodeA.nodeId, job.id, onA.leaseEpoch, s(100));
    // A goes away; the job is taken back (billed 100 s at 3.60/hour = 0.10) and goes to B.
    await db().transaction((tx) => endLeaseOnNode(tx, job.id, 'node lost', new Date(s(200))));
    await db().update(nodes).set({ status: 'offline' }).where(eq(nodes.id, nodeA.nodeId));
    const nodeB = await insertNode(db(), { accountId: b.accountId, gpus: [{ model: 'NVIDIA L4' }], pricePerGpuHour: 3.6 }, { audience: h.coordinator.deps.config.name });
    await pass(s(300));
    const onB = await row(job.id);
    expect(onB.nodeId).toBe(nodeB.nodeId);
    // B runs it 60 s and reports its end (0.06).
    await db().transaction((tx) => finishJob(tx, nodeB.nodeId, job.id, { epoch: onB.leaseEpoch, reason: 'succeeded', exitCode: 0 }, new Date(s(360))));
    const done = await row(job.id);
    expect(done.status).toBe('succeeded');
    expect(done.costMicros).toBe(160_000);
    expect((await money(client.key)).client).toEqual({ balance: 9.84, held: 0, available: 9.84, creditLimit: 0 });
    expect((await money(a.key)).provider!.earned).toBe(0.09);
    expect((await money(b.key)).provider!.earned).toBe(0.054);
    const until = new Date(s(400)).toISOString().slice(0, 10);
    const usageA = await a.api.get<{ earnings: { total: number; byJob: { jobId: string; nodeId: string; amount: number }[] } }>(`/v1/usage?until=${until}`);
    expect(usageA.earnings.byJob).toEqual([expect.objectContaining({ jobId: job.id, nodeId: nodeA.nodeId, amount: 0.09 })]);
    const usageB = await b.api.get<{ earnings: { total: number; byJob: { jobId: string; nodeId: string; amount: number }[] } }>(`/v1/usage?until=${until}`);
    expect(usageB.earnings.byJob).toEqual([expect.objectContaining({ jobId: job.id, nodeId: nodeB.nodeId, amount: 0.054 })]);
    await new LedgerChecker().check(database());
  });
});
