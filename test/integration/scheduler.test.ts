import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { eq, inArray, sql } from 'drizzle-orm';
import { gpus, jobEvents, jobs, nodes } from '../../coordinator/db/schema/index.ts';
import { dbSkipReason, startHarness, type Harness } from '../support/harness.ts';
import { insertNode, insertProvider, jobSpec, type TestAgent } from '../support/factories.ts';
import type { Job } from '../../shared/jobs.ts';
import type { Work } from '../../shared/leases.ts';
import type { DryRun } from '../../shared/pool.ts';

// The scheduler through the real coordinator: jobs submitted over HTTP, nodes written into the
// tables, placements read back from the database and through the agent's work long-poll.

describe.skipIf(dbSkipReason)('scheduler', () => {
  let h: Harness;
  let client: Awaited<ReturnType<Harness['newAccount']>>;
  const db = () => h.coordinator.deps.database.db;
  const node = async (spec: Omit<Parameters<typeof insertNode>[1], 'accountId'> & { accountId?: string }) =>
    insertNode(db(), { accountId: spec.accountId ?? (await insertProvider(db())), ...spec }, { audience: h.coordinator.deps.config.name, baseUrl: h.url });
  const submit = (over: Record<string, unknown> = {}, res: Record<string, unknown> = {}) => client.api.post<Job>('/v1/jobs', jobSpec(over, res));
  const job = (id: string) => client.api.get<Job>(`/v1/jobs/${id}`);
  /** Polls until the job satisfies `ok` (the scheduler runs on its own, woken by the submit). */
  async function until(id: string, ok: (j: Job) => boolean, ms = 10_000): Promise<Job> {
    const deadline = Date.now() + ms;
    for (;;) {
      const j = await job(id);
      if (ok(j)) return j;
      if (Date.now() > deadline) throw new Error(`job ${id} never got there: ${JSON.stringify(j)}`);
      await new Promise((r) => setTimeout(r, 25));
    }
  }
  const pass = async () => {
    await h.coordinator.deps.scheduler.idle();
    return h.coordinator.deps.scheduler.runPass();
  };

  beforeAll(async () => {
    h = await startHarness({ GANTRY_SCHEDULER_TICK_MS: '60000' });
  });
  afterAll(async () => h?.close());
  beforeEach(async () => {
    // Each test sees only its own nodes: earlier ones are taken offline.
    await db().update(nodes).set({ status: 'offline' });
    await db().update(jobs).set({ status: 'cancelled' }).where(eq(jobs.status, 'queued'));
    client = await h.newAccount('client');
  });

  it('leases a job to a node with the GPUs it asks for, and records the lease', async () => {
    const a = await node({ gpus: [{ model: 'NVIDIA H100 80GB HBM3' }, { model: 'NVIDIA H100 80GB HBM3' }], pricePerGpuHour: 2, pricePerCpuHour: 0.05 });
    const submitted = await submit({}, { gpus: 2, cpu: 4, memoryMb: 8192, gpu: { model: 'H100' } });
    const leased = await until(submitted.id, (j) => j.status === 'leased');
    expect(leased.nodeId).toBe(a.nodeId);
    expect([...leased.gpuIds!].sort()).toEqual([...a.gpuIds].sort());
    expect(leased.leaseEpoch).toBe(1);
    expect(leased.attempts).toBe(1);
    const [row] = await db().select().from(jobs).where(eq(jobs.id, submitted.id));
    expect(row!.priceGpuHourMicros).toBe(2_000_000);
    expect(row!.priceCpuHourMicros).toBe(50_000);
    expect(row!.leaseExpiresAt!.getTime()).toBeGreaterThan(Date.now() + 60_000);
    const [n] = await db().select().from(nodes).where(eq(nodes.id, a.nodeId));
    expect(n!.allocatedCpuMillis).toBe(4000);
    expect(n!.allocatedMemoryMb).toBe(8192);
    const held = await db().select({ id: gpus.id }).from(gpus).where(eq(gpus.jobId, submitted.id));
    expect(held.map((g) => g.id).sort()).toEqual([...a.gpuIds].sort());
    const events = await db().select().from(jobEvents).where(eq(jobEvents.jobId, submitted.id)).orderBy(jobEvents.id);
    expect(events.map((e) => [e.fromStatus, e.toStatus])).toEqual([
      [null, 'queued'],
      ['queued', 'leased'],
    ]);
    expect(events[1]!.reason).toContain(a.nodeId);
  });

  it('matches models by words: A10 is not A100, V100 is not V100S', async () => {
    const a100 = await node({ gpus: [{ model: 'NVIDIA A100-SXM4-40GB' }] });
    const v100s = await node({ gpus: [{ model: 'Tesla V100S-PCIE-32GB' }] });
    const j1 = await submit({}, { gpus: 1, gpu: { model: 'A10' } });
    const j2 = await submit({}, { gpus: 1, gpu: { model: 'V100' } });
    const j3 = await submit({}, { gpus: 1, gpu: { model: 'a100' } });
    await pass();
    expect((await job(j1.id)).status).toBe('queued');
    expect((await job(j2.id)).status).toBe('queued');
    const placed = await until(j3.id, (j) => j.status === 'leased');
    expect(placed.nodeId).toBe(a100.nodeId);
    expect((await job(j1.id)).pendingReason).toBe('no online node has 1 free GPU of model A10');
    const a10 = await node({ gpus: [{ model: 'NVIDIA A10' }] });
    await pass();
    expect((await until(j1.id, (j) => j.status === 'leased')).nodeId).toBe(a10.nodeId);
    void v100s;
  });

  it('says in plain words why a job waits, including what the price limit rules out', async () => {
    for (let i = 0; i < 4; i++) await node({ gpus: [{ model: 'NVIDIA H100 80GB HBM3' }, { model: 'NVIDIA H100 80GB HBM3' }], pricePerGpuHour: 2 });
    const j = await submit({ maxPricePerHour: 3 }, { gpus: 2, gpu: { model: 'H100' } });
    const expected = 'no online node has 2 free GPUs of model H100 within 3.00/hour; 4 would fit without the price limit';
    const waiting = await until(j.id, (x) => x.pendingReason === expected);
    expect(waiting.status).toBe('queued');
    const cpuOnly = await submit({}, { cpu: 64, memoryMb: 1024 });
    const w2 = await until(cpuOnly.id, (x) => x.pendingReason === 'no online node has 64 free CPUs and 1024 MB of free memory');
    expect(w2.status).toBe('queued');
  });

  it("places a job only where its disk budget fits the node's reported free disk, less what its jobs hold", async () => {
    await node({ gpus: [{ model: 'NVIDIA L4' }], diskMb: 8_000 });
    const roomy = await node({ gpus: [{ model: 'NVIDIA L4' }, { model: 'NVIDIA L4' }], diskMb: 50_000 });
    const first = await submit({}, { gpus: 1, diskMb: 30_000 });
    expect((await until(first.id, (x) => x.status === 'leased')).nodeId).toBe(roomy.nodeId);
    const [n] = await db().select().from(nodes).where(eq(nodes.id, roomy.nodeId));
    expect(n!.allocatedDiskMb).toBe(30_000);
    // A GPU is free on both nodes, but 20,000 MB of disk on neither.
    const second = await submit({}, { gpus: 1, diskMb: 30_000 });
    const waiting = await until(second.id, (x) => /would fit but for 30000 MB of free disk/.test(x.pendingReason ?? ''));
    expect(waiting.status).toBe('queued');
    expect(waiting.pendingReason).toMatch(/; 2 nodes would fit but for 30000 MB of free disk$/);
    const dry = await client.api.post<DryRun>('/v1/jobs/dry-run', jobSpec({}, { gpus: 1, diskMb: 30_000 }));
    expect(dry.fits).toBe(false);
    expect(dry.ruledOut.find((r) => r.constraint === 'disk')).toEqual({ constraint: 'disk', nodes: 2, detail: '2 nodes with less than 30000 MB of disk free' });
  });

  it('places the cheapest node first, then the tightest fit, and honours labels and region', async () => {
    const pricey = await node({ gpus: [{ model: 'NVIDIA L4' }], pricePerGpuHour: 1 });
    const big = await node({ gpus: [{ model: 'NVIDIA L4' }, { model: 'NVIDIA L4' }], pricePerGpuHour: 0.5 });
    const small = await node({ gpus: [{ model: 'NVIDIA L4' }], pricePerGpuHour: 0.5 });
    const labelled = await node({ gpus: [{ model: 'NVIDIA L4' }], pricePerGpuHour: 3, labels: { zone: 'b' }, region: 'us-east' });
    const first = await submit({}, { gpus: 1 });
    expect((await until(first.id, (j) => j.status === 'leased')).nodeId).toBe(small.nodeId);
    const second = await submit({ constraints: { nodeLabels: { zone: 'b' }, region: 'us-east' } }, { gpus: 1 });
    expect((await until(second.id, (j) => j.status === 'leased')).nodeId).toBe(labelled.nodeId);
    const third = await submit({ maxPricePerHour: 0.75 }, { gpus: 1 });
    expect((await until(third.id, (j) => j.status === 'leased')).nodeId).toBe(big.nodeId);
    const fourth = await submit({ maxPricePerHour: 0.75 }, { gpus: 1 });
    expect((await until(fourth.id, (j) => j.status === 'leased')).nodeId).toBe(big.nodeId);
    const fifth = await submit({ maxPricePerHour: 0.75 }, { gpus: 1 });
    await pass();
    expect((await job(fifth.id)).status).toBe('queued');
    expect((await job(fifth.id)).pendingReason).toBe('no online node has 1 free GPU within 0.75/hour; 1 would fit without the price limit');
    void pricey;
  });

  it('a job that fits nowhere does not block the ones behind it, and priority goes first', async () => {
    const huge = await submit({ priority: 10 }, { gpus: 4 });
    const low = await submit({ priority: -5 }, { gpus: 1 });
    const high = await submit({ priority: 5 }, { gpus: 1 });
    await h.coordinator.deps.scheduler.idle();
    // One GPU comes free for three waiting jobs: the 4-GPU one cannot use it, the higher priority gets it.
    const a = await node({ gpus: [{ model: 'NVIDIA L4' }], cpu: 4 });
    await pass();
    expect((await until(high.id, (j) => j.status === 'leased')).nodeId).toBe(a.nodeId);
    expect((await job(low.id)).status).toBe('queued');
    expect((await job(huge.id)).pendingReason).toBe('no online node has 4 free GPUs');
  });

  it('respects a node or provider constraint, a GPU memory floor and a CUDA version', async () => {
    const provider = await insertProvider(db());
    const old = await node({ accountId: provider, gpus: [{ model: 'NVIDIA RTX A5000', memoryMb: 24_564, cudaVersion: '11.8' }] });
    const other = await node({ gpus: [{ model: 'NVIDIA RTX A5000', memoryMb: 24_564, cudaVersion: '12.4' }] });
    const j1 = await submit({ constraints: { providerId: provider } }, { gpus: 1, gpu: { minCudaVersion: '12.0' } });
    const j2 = await submit({ constraints: { nodeId: other.nodeId } }, { gpus: 1, gpu: { minMemoryMb: 40_000 } });
    const j3 = await submit({ constraints: { nodeId: old.nodeId } }, { gpus: 1, gpu: { model: 'RTX A5000' } });
    await pass();
    expect((await job(j1.id)).pendingReason).toBe(`no online node of provider ${provider} has 1 free GPU with at least CUDA 12.0`);
    expect((await job(j2.id)).pendingReason).toBe(`no online node ${other.nodeId} has 1 free GPU with at least 40000 MB`);
    expect((await until(j3.id, (j) => j.status === 'leased')).nodeId).toBe(old.nodeId);
  });

  it('gives no new leases to a draining node, and undrain brings them back', async () => {
    const prov = await h.newAccount('provider');
    const a = await node({ accountId: prov.accountId, gpus: [{ model: 'NVIDIA L4' }] });
    const drained = await prov.api.post<{ draining: boolean }>(`/v1/nodes/${a.nodeId}/drain`);
    expect(drained.draining).toBe(true);
    const stranger = await h.newAccount('provider');
    await expect(stranger.api.post(`/v1/nodes/${a.nodeId}/undrain`)).rejects.toMatchObject({ status: 404 });
    const j = await submit({}, { gpus: 1 });
    await pass();
    expect((await job(j.id)).status).toBe('queued');
    await prov.api.post(`/v1/nodes/${a.nodeId}/undrain`);
    expect((await until(j.id, (x) => x.status === 'leased')).nodeId).toBe(a.nodeId);
  });

  it('hands the lease to the node through the long-poll at once', async () => {
    const a: TestAgent = await node({ gpus: [{ model: 'NVIDIA L4' }] });
    const started = Date.now();
    const poll = a.api.get<Work>('/v1/agent/work?wait=20', { timeoutMs: 30_000 });
    await new Promise((r) => setTimeout(r, 200));
    const j = await submit({}, { gpus: 1 });
    const work = await poll;
    expect(Date.now() - started).toBeLessThan(10_000);
    expect(work.leases.map((l) => l.jobId)).toEqual([j.id]);
    expect(work.leases[0]!.gpus.map((g) => g.id)).toEqual(a.gpuIds);
    // What it holds is not handed out again.
    const again = await a.api.get<Work>(`/v1/agent/work?wait=0&have=${j.id}.1`);
    expect(again.leases).toEqual([]);
  });

  it('never commits a batch that would break the allocation CHECK; it plans again', async () => {
    const jA = await submit({}, { gpus: 1, cpu: 3 });
    const jB = await submit({}, { gpus: 1, cpu: 1 });
    await h.coordinator.deps.scheduler.idle();
    // The node comes after the submits' passes, so only this test's pass sees it.
    const a = await node({ gpus: [{ model: 'NVIDIA L4' }, { model: 'NVIDIA L4' }], cpu: 4 });
    const { schedulePass } = await import('../../coordinator/scheduler/placement.ts');
    let stolen = false;
    const r = await schedulePass({
      database: h.coordinator.deps.database,
      clock: h.coordinator.deps.clock,
      log: h.coordinator.deps.log,
      leaseTtlSeconds: 300,
      batchSize: 100,
      beforeCommit: async () => {
        if (stolen) return;
        stolen = true;
        await db().update(nodes).set({ allocatedCpuMillis: sql`${nodes.allocatedCpuMillis} + 2000` }).where(eq(nodes.id, a.nodeId));
      },
    });
    expect(r.conflicts).toBeGreaterThanOrEqual(1);
    const [n] = await db().select().from(nodes).where(eq(nodes.id, a.nodeId));
    expect(n!.allocatedCpuMillis).toBeLessThanOrEqual(n!.cpuMillis);
    const states = await db().select({ id: jobs.id, status: jobs.status }).from(jobs).where(inArray(jobs.id, [jA.id, jB.id]));
    // 2 of 4 cores were taken: only the 1-core job fits now.
    expect(Object.fromEntries(states.map((s) => [s.id, s.status]))).toEqual({ [jA.id]: 'queued', [jB.id]: 'leased' });
  });
});
