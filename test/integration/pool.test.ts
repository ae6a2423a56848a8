import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { eq, sql } from 'drizzle-orm';
import postgres from 'postgres';
import type { Pool, PoolHistory } from '../../shared/pool.ts';
import { jobs, poolHistory } from '../../coordinator/db/schema/index.ts';
import { PoolHistoryWriter } from '../../coordinator/pool/history.ts';
import { PoolStats } from '../../coordinator/pool/stats.ts';
import { silentLogger } from '../../coordinator/log.ts';
import { lockKeys } from '../../coordinator/db/migrate.ts';
import { dbSkipReason, itOn, startHarness, type Harness } from '../support/harness.ts';
import { a100, gpusOf, h100, seedNode } from '../support/pool-seed.ts';

// Asks no scheduler could ever place (no such GPU, more memory than any node), so they stay queued.
const unplaceable = (name: string, gpus: number, model?: string) => ({
  name,
  image: 'busybox:latest',
  command: ['true'],
  resources: model
    ? { cpu: 1, memoryMb: 1024, gpus, gpu: { model } }
    : { cpu: 1, memoryMb: 16_000_000, gpus },
});

describe.skipIf(dbSkipReason)('pool statistics', () => {
  let h: Harness;
  let pool: Pool;
  let providerId: string;
  const names: string[] = [];

  beforeAll(async () => {
    h = await startHarness({ GANTRY_POOL_CACHE_MS: '0' });
    const provider = await h.newAccount('provider');
    providerId = provider.accountId;
    const db = h.coordinator.deps.database.db;
    const seeds = [
      // eu-west: 4 H100 at 2.5 (one busy), 1 H100 at 4.0
      { name: 'alpha', region: 'eu-west', cpu: 32, allocatedCpu: 8, memoryMb: 262_144, allocatedMemoryMb: 65_536, pricePerGpuHour: 2.5,
        gpus: [...gpusOf(h100, 81_559, 3, { utilizationPct: 10 }), { model: h100, memoryMb: 81_559, jobId: 'job_busyseed000000000000000', utilizationPct: 90 }] },
      { name: 'beta', region: 'eu-west', cpu: 8, memoryMb: 65_536, pricePerGpuHour: 4, gpus: gpusOf(h100, 81_559, 1) },
      // us-east: a draining node with 2 H100 at 1.0 (online but not offered), MIG slices at 0.5
      { name: 'gamma', region: 'us-east', draining: true, cpu: 16, pricePerGpuHour: 1, gpus: gpusOf(h100, 81_559, 2) },
      { name: 'delta', region: 'us-east', cpu: 16, pricePerGpuHour: 0.5,
        gpus: [
          { model: a100, memoryMb: 4_864, mig: { gpuInstanceId: 7, computeInstanceId: 0 } },
          { model: a100, memoryMb: 4_864, mig: { gpuInstanceId: 8, computeInstanceId: 0 } },
          { model: a100, memoryMb: 19_968, mig: { gpuInstanceId: 1, computeInstanceId: 0 } },
        ] },
      // offline: 8 A100 whole GPUs; retired nodes do not count at all
      { name: 'epsilon', region: 'us-east', status: 'offline' as const, cpu: 64, pricePerGpuHour: 1.5, gpus: gpusOf(a100, 40_960, 8) },
      { name: 'zeta', region: 'us-east', status: 'retired' as const, cpu: 64, gpus: gpusOf(a100, 40_960, 8) },
      // no region, CPU only
      { name: 'eta', region: null, cpu: 4, memoryMb: 8_192 },
    ];
    for (const s of seeds) {
      names.push(s.name);
      await seedNode(db, providerId, s);
    }

    const client = await h.newAccount('client');
    await client.api.post('/v1/jobs', unplaceable('wants-b200-a', 2, 'NVIDIA B200'));
    await client.api.post('/v1/jobs', unplaceable('wants-b200-b', 1, 'NVIDIA B200'));
    await client.api.post('/v1/jobs', unplaceable('huge-cpu', 0));
    // Two jobs that ran in the last hour (one succeeded, one failed), one that finished long ago.
    const now = Date.now();
    for (const [name, status, finishedAgo] of [
      ['ran-ok', 'succeeded', 60_000],
      ['ran-bad', 'failed', 120_000],
      ['ran-long-ago', 'succeeded', 5 * 3_600_000],
    ] as const) {
      const job = await client.api.post<{ id: string }>('/v1/jobs', unplaceable(name, 0));
      await db
        .update(jobs)
        .set({ status, startedAt: new Date(now - finishedAgo - 30_000), finishedAt: new Date(now - finishedAgo) })
        .where(eq(jobs.id, job.id));
    }
    pool = await h.client().get<Pool>('/v1/pool');
  });
  afterAll(async () => h?.close());

  it('answers without a key, with GPUs by model and kind', async () => {
    const res = await h.fetch('/v1/pool');
    expect(res.status).toBe(200);
    const whole = pool.models.find((m) => m.model === h100 && m.kind === 'gpu')!;
    expect(whole).toMatchObject({ online: 7, free: 4, busy: 1, draining: 2, offline: 0, memoryMb: 81_559, memoryTotalMb: 7 * 81_559 });
    // Prices among free GPUs only: three at 2.5 and one at 4.0 (the draining node's 1.0 is not offered).
    expect(whole.pricePerGpuHour).toEqual({ min: 2.5, median: 2.5, max: 4 });
    expect(whole.avgUtilizationPct).toBe(30);
    const a100Whole = pool.models.find((m) => m.model === a100 && m.kind === 'gpu')!;
    expect(a100Whole).toMatchObject({ online: 0, free: 0, offline: 8, pricePerGpuHour: null, avgUtilizationPct: null });
  });

  it('shows MIG devices apart from whole GPUs, one row per profile', () => {
    const mig = pool.models.filter((m) => m.kind === 'mig').map((m) => [m.model, m.memoryMb, m.free]);
    expect(mig.sort()).toEqual([
      [a100, 19_968, 1],
      [a100, 4_864, 2],
    ]);
    expect(pool.migDevices).toEqual({ online: 3, free: 3, busy: 0, draining: 0, offline: 0 });
    expect(pool.gpus).toEqual({ online: 7, free: 4, busy: 1, draining: 2, offline: 8 });
  });

  it('totals nodes, CPU and memory of online nodes, free only where work can land', () => {
    expect(pool.nodes).toEqual({ online: 5, offline: 1, draining: 1 });
    expect(pool.cpu).toEqual({ cores: 32 + 8 + 16 + 16 + 4, free: 24 + 8 + 16 + 4 });
    expect(pool.memory.totalMb).toBe(262_144 + 65_536 * 3 + 8_192);
    expect(pool.memory.freeMb).toBe(262_144 - 65_536 + 65_536 + 65_536 + 8_192);
  });

  it('counts the queue by requested model and the last hour', () => {
    expect(pool.queue.depth).toBe(3);
    expect(pool.queue.gpusRequested).toBe(3);
    expect(pool.queue.byModel.map((q) => [q.model, q.jobs, q.gpus])).toEqual([
      ['NVIDIA B200', 2, 3],
      [null, 1, 0],
    ]);
    expect(pool.queue.oldestWaitSeconds).toBeGreaterThanOrEqual(0);
    expect(Date.parse(pool.queue.oldestQueuedAt!)).toBeLessThanOrEqual(Date.parse(pool.at));
    expect(pool.lastHour).toEqual({ started: 2, succeeded: 1, failed: 1 });
  });

  it('breaks the pool down by region', () => {
    const byRegion = Object.fromEntries(pool.regions.map((r) => [String(r.region), r]));
    expect(byRegion['eu-west']).toMatchObject({ nodesOnline: 2, nodesOffline: 0, gpusOnline: 5, gpusFree: 4, gpusBusy: 1, cpuCores: 40 });
    expect(byRegion['us-east']).toMatchObject({ nodesOnline: 2, nodesOffline: 1, gpusOnline: 5, gpusFree: 3, gpusBusy: 0 });
    expect(byRegion['null']).toMatchObject({ nodesOnline: 1, gpusOnline: 0, cpuCores: 4 });
  });

  it("names no tenant: no node, account or job appears", async () => {
    const text = JSON.stringify(pool);
    for (const name of [...names, 'wants-b200-a', 'ran-ok', providerId, 'node_', 'acct_', 'job_']) expect(text).not.toContain(name);
  });

  it('computes once for a crowd of readers and serves it while fresh', async () => {
    const stats = new PoolStats(h.coordinator.deps.database, h.coordinator.deps.clock, 60_000);
    const answers = await Promise.all(Array.from({ length: 20 }, () => stats.get()));
    expect(new Set(answers).size).toBe(1);
    await seedNode(h.coordinator.deps.database.db, providerId, { name: 'late', gpus: gpusOf(h100, 81_559, 1) });
    expect((await stats.get()).gpus.online).toBe(answers[0]!.gpus.online);
    expect((await stats.compute()).gpus.online).toBe(answers[0]!.gpus.online + 1);
  });
});

describe.skipIf(dbSkipReason)('pool history', () => {
  let h: Harness;
  beforeAll(async () => {
    h = await startHarness({ GANTRY_POOL_CACHE_MS: '0', GANTRY_POOL_HISTORY_STEP_SECONDS: '60', GANTRY_POOL_HISTORY_RETENTION_HOURS: '24' });
    const provider = await h.newAccount('provider');
    await seedNode(h.coordinator.deps.database.db, provider.accountId, { gpus: gpusOf(h100, 81_559, 2) });
  });
  afterAll(async () => h?.close());

  const writerAt = (at: Date) => {
    const { database, pool } = h.coordinator.deps;
    return new PoolHistoryWriter(database, { now: () => at }, pool, { stepSeconds: 60, retentionSeconds: 24 * 3600 }, silentLogger);
  };
  // On the hour, so that coarser buckets (multiples of the step since the epoch) line up with it.
  const base = Math.floor((Date.now() - 3 * 3_600_000) / 3_600_000) * 3_600_000;

  it('keeps one row per step, answers a series and resamples it to a coarser step', async () => {
    for (let i = 0; i < 6; i++) expect(await writerAt(new Date(base + i * 60_000 + 5_000)).tick()).toBe(true);
    // A second writer in the same step writes nothing.
    expect(await writerAt(new Date(base + 30_000)).tick()).toBe(false);
    const since = new Date(base).toISOString();
    const fine = await h.client().get<PoolHistory>(`/v1/pool/history?since=${since}&step=60`);
    const mine = fine.points.filter((p) => Date.parse(p.at) < base + 6 * 60_000);
    expect(mine.map((p) => Date.parse(p.at) - base)).toEqual([0, 1, 2, 3, 4, 5].map((i) => i * 60_000));
    expect(mine[0]).toMatchObject({ gpus: { online: 2, free: 2, busy: 0 }, allocationPct: 0, queueDepth: 0 });
    expect(mine[0]!.models).toEqual([{ model: h100, kind: 'gpu', online: 2, free: 2, busy: 0 }]);
    const coarse = await h.client().get<PoolHistory>(`/v1/pool/history?since=${since}&step=3m`);
    expect(coarse.step).toBe(180);
    expect(coarse.points.filter((p) => Date.parse(p.at) < base + 6 * 60_000)).toHaveLength(2);
  });

  it('prunes rows past retention', async () => {
    const old = new Date(Date.now() - 30 * 3_600_000);
    await h.coordinator.deps.database.db.insert(poolHistory).values({
      at: old,
      sample: { gpus: { online: 1, free: 1, busy: 0, draining: 0, offline: 0 }, allocationPct: 0, avgUtilizationPct: null, queueDepth: 0, oldestWaitSeconds: null, models: [] },
    });
    await writerAt(new Date()).tick();
    const rows = await h.coordinator.deps.database.rows<{ n: unknown }>(sql`select count(*) as n from pool_history where at <= ${old.toISOString()}::timestamptz`);
    expect(Number(rows[0]!.n)).toBe(0);
  });

  it('rejects a bad since or step as problem+json', async () => {
    for (const q of ['since=yesterday', 'step=fast', 'since=2999-01-01T00:00:00Z']) {
      const res = await h.fetch(`/v1/pool/history?${q}`);
      expect(res.status).toBe(400);
      expect(res.headers.get('content-type')).toMatch(/problem\+json/);
    }
  });

  itOn('postgres')('writes nothing while another coordinator holds the history lock', async () => {
    const other = postgres(h.testDb.url!, { max: 1, onnotice: () => {} });
    try {
      await other.begin(async (tx) => {
        await tx`select pg_advisory_xact_lock(${lockKeys.poolHistory})`;
        expect(await writerAt(new Date(base + 20 * 60_000)).tick()).toBe(false);
      });
      expect(await writerAt(new Date(base + 20 * 60_000)).tick()).toBe(true);
    } finally {
      await other.end({ timeout: 1 });
    }
  });
});
