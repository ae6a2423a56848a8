import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { sql } from 'drizzle-orm';
import { accounts, gpus, jobs, nodes } from '../../coordinator/db/schema/index.ts';
import { submitArray } from '../../coordinator/jobs/arrays.ts';
import { submitJob } from '../../coordinator/jobs/lifecycle.ts';
import { leaseJobs, PlacementConflict } from '../../coordinator/jobs/transitions.ts';
import { dryRun, findOffers } from '../../coordinator/pool/offers.ts';
import { computePool } from '../../coordinator/pool/stats.ts';
import { loadPassState, loadQueueBatch } from '../../coordinator/scheduler/placement.ts';
import { withinMaxParallel } from '../../coordinator/scheduler/rules.ts';
import { newId } from '../../shared/ids.ts';
import { JobSpec } from '../../shared/jobs.ts';
import { createTestDatabase, type TestDatabase } from '../support/database.ts';
import { dbSkipReason } from '../support/harness.ts';

// The matching rules have two forms (coordinator/scheduler/rules.ts): JavaScript in the scheduler,
// SQL in offers, dry runs, pool stats and the lease guard. Over random pools and jobs they must
// agree: the scheduler places a job iff the dry run says it fits, on the dry run's first offer;
// pool stats count as free exactly what offers list. Ties end on node id, so "first" is one node.

const rounds = 30;
const jobsPerRound = 8;

// A seeded generator: a failing round is the same on the next run (the seed is in the message).
function generator(seed: number) {
  let x = seed >>> 0 || 1;
  const next = () => ((x = (Math.imul(x, 1_103_515_245) + 12_345) >>> 0) / 2 ** 32);
  return {
    float: next,
    int: (lo: number, hi: number) => lo + Math.floor(next() * (hi - lo + 1)),
    pick: <T>(xs: readonly T[]): T => xs[Math.floor(next() * xs.length)]!,
    chance: (p: number) => next() < p,
  };
}
type Rng = ReturnType<typeof generator>;

const models = [
  { name: 'NVIDIA H100 80GB HBM3', memoryMb: 81_559, ask: 'H100' },
  { name: 'NVIDIA A100-SXM4-40GB', memoryMb: 40_960, ask: 'A100' },
  { name: 'NVIDIA GeForce RTX 4090', memoryMb: 24_564, ask: 'RTX 4090' },
  { name: 'Tesla T4', memoryMb: 15_360, ask: 'T4' },
] as const;
// Few prices, so that ties are common and the later keys decide.
const prices = [0, 300_000, 600_000, 1_200_000];

describe.skipIf(dbSkipReason)('the matching rules agree in their JS and SQL forms', () => {
  let testDb: TestDatabase;
  const db = () => testDb.database.db;
  let client: string;
  let providers: string[];

  beforeAll(async () => {
    testDb = await createTestDatabase();
    client = newId('account');
    providers = [newId('account'), newId('account')];
    await db().insert(accounts).values([
      { id: client, name: 'parity-client', kind: 'client' },
      ...providers.map((id, i) => ({ id, name: `parity-provider-${i}`, kind: 'provider' as const })),
    ]);
  });
  afterAll(async () => testDb?.drop());

  /**
   * A random pool: nodes online or not, draining or not, with or without a runtime, some busy
   * GPUs; most nodes of one model, some of two models or with MIG devices beside whole GPUs.
   */
  async function randomPool(rng: Rng): Promise<string[]> {
    await db().execute(sql`delete from gpus`);
    await db().execute(sql`delete from job_events`);
    await db().execute(sql`delete from jobs`);
    await db().execute(sql`delete from nodes`);
    const ids: string[] = [];
    const count = rng.int(2, 8);
    for (let i = 0; i < count; i++) {
      const id = newId('node');
      ids.push(id);
      const cpuMillis = rng.pick([4000, 8000, 16_000]);
      const memoryMb = rng.pick([16_384, 65_536]);
      const diskMb = rng.pick([5_120, 51_200, 512_000]);
      await db().insert(nodes).values({
        id,
        accountId: rng.pick(providers),
        name: `parity-${i}`,
        status: rng.chance(0.8) ? 'online' : 'offline',
        draining: rng.chance(0.15),
        takesWork: rng.chance(0.8),
        labels: rng.chance(0.5) ? { zone: rng.pick(['a', 'b']) } : {},
        region: rng.pick([null, 'eu', 'us']),
        // What its agent says it takes; an older agent says nothing.
        runtime: rng.chance(0.2)
          ? { kind: 'docker', version: '24.0' }
          : { kind: 'docker', version: '24.0', registries: rng.pick([['docker.io'], ['docker.io', 'ghcr.io'], ['127.0.0.1:5000']]), networks: rng.pick([['bridge', 'none'], ['none']]) },
        publicKey: { kty: 'OKP', crv: 'Ed25519', x: id },
        cpuMillis,
        memoryMb,
        allocatedCpuMillis: rng.pick([0, 0, cpuMillis / 2, cpuMillis]),
        allocatedMemoryMb: rng.pick([0, 0, memoryMb / 2]),
        diskMb,
        allocatedDiskMb: rng.pick([0, 0, diskMb / 2]),
        priceGpuHourMicros: rng.pick(prices),
        priceCpuHourMicros: rng.pick([0, 0, 10_000]),
      });
      const model = rng.pick(models);
      const mixed = rng.chance(0.3);
      const other = rng.pick(models);
      const cuda = rng.pick(['12.4', '11.8', null]);
      const gpuCount = rng.int(0, mixed ? 6 : 4);
      if (gpuCount) {
        await db().insert(gpus).values(
          Array.from({ length: gpuCount }, (_, index) => {
            const m = mixed && rng.chance(0.5) ? other : model;
            return {
              nodeId: id,
              id: `GPU-${id.slice(5)}-${index}`,
              index,
              uuid: `GPU-${id.slice(5)}-${index}`,
              model: m.name,
              memoryMb: m.memoryMb,
              driverVersion: '550.54.15',
              cudaVersion: cuda,
              mig: mixed && rng.chance(0.25) ? { gpuInstanceId: index, computeInstanceId: 0 } : null,
              jobId: rng.chance(0.25) ? 'job_held_elsewhere' : null,
            };
          }),
        );
      }
    }
    return ids;
  }

  function randomSpec(rng: Rng, nodeIds: string[]): JobSpec {
    const gpuCount = rng.pick([0, 1, 1, 2, 3]);
    const model = rng.chance(0.5) ? rng.pick(models) : null;
    const gpu = {
      ...(model ? { model: model.ask } : {}),
      ...(rng.chance(0.2) ? { minMemoryMb: rng.pick([20_000, 40_000]) } : {}),
      ...(rng.chance(0.2) ? { minCudaVersion: '12.0' } : {}),
    };
    return JobSpec.parse({
      name: 'parity',
      image: rng.pick(['busybox:latest', 'ghcr.io/acme/trainer:1', '127.0.0.1:5000/gantry/busybox:latest']),
      network: rng.pick(['bridge', 'none']),
      command: ['true'],
      resources: { cpu: rng.pick([1, 2, 4, 8]), memoryMb: rng.pick([1024, 8192, 32_768]), diskMb: rng.pick([1_024, 10_240, 40_960]), gpus: gpuCount, ...(gpuCount && Object.keys(gpu).length ? { gpu } : {}) },
      ...(rng.chance(0.3) ? { maxPricePerHour: rng.pick([0.5, 1, 3]) } : {}),
      constraints: {
        ...(rng.chance(0.2) ? { region: rng.pick(['eu', 'us']) } : {}),
        ...(rng.chance(0.2) ? { nodeLabels: { zone: rng.pick(['a', 'b']) } } : {}),
        ...(rng.chance(0.1) ? { nodeId: rng.pick(nodeIds) } : {}),
        ...(rng.chance(0.1) ? { providerId: rng.pick(providers) } : {}),
      },
    });
  }

  /** Where the scheduler would place the spec now: submitted, read from the queue and planned as a pass does. */
  async function schedulerChoice(spec: JobSpec): Promise<{ node: string; gpus: string | null } | null> {
    const now = new Date();
    const { job } = await submitJob(db(), client, spec, undefined, now);
    try {
      const state = await loadPassState(db(), now.getTime());
      const { jobs: queued } = await loadQueueBatch(db(), null, 10, null);
      expect(queued.map((q) => q.id)).toEqual([job.id]);
      const out = state.place(queued[0]!);
      // The GPUs it takes, by model and kind: all alike, as an offer lists them.
      const kinds = out.placed ? [...new Set(out.gpus.map((g) => `${g.mig ? 'mig' : 'gpu'} ${g.model}`))] : [];
      return out.placed ? { node: out.node.id, gpus: kinds.length ? kinds.join(' + ') : null } : null;
    } finally {
      await db().execute(sql`delete from job_events where job_id = ${job.id}`);
      await db().execute(sql`delete from jobs where id = ${job.id}`);
    }
  }

  it(`over ${rounds} random pools, the scheduler places a job iff the dry run fits it, on its first offer; pool free = offers`, async () => {
    const seed = Number(process.env.GANTRY_PARITY_SEED ?? Date.now() % 100_000);
    const rng = generator(seed);
    for (let round = 0; round < rounds; round++) {
      const nodeIds = await randomPool(rng);
      const where = `seed ${seed}, round ${round}`;
      for (let k = 0; k < jobsPerRound; k++) {
        const spec = randomSpec(rng, nodeIds);
        const dry = await dryRun(testDb.database, spec);
        const placed = await schedulerChoice(spec);
        const first = dry.offers[0];
        expect(
          { fits: placed !== null, node: placed?.node ?? null, gpus: placed?.gpus ?? null },
          `${where}, job ${k}: ${JSON.stringify(spec.resources)} ${JSON.stringify(spec.constraints)}`,
        ).toEqual({
          fits: dry.fits,
          node: first?.nodeId ?? null,
          gpus: first?.gpu && spec.resources.gpus > 0 ? `${first.gpu.kind} ${first.gpu.model}` : null,
        });
      }

      // Free GPUs: what the pool counts, model by model, is what offers of one GPU list.
      const pool = await computePool(testDb.database, new Date());
      const offered = await findOffers(testDb.database, { gpus: 1, cpuMillis: 0, memoryMb: 0 }, 10_000);
      const offeredFree = new Map<string, number>();
      for (const o of offered) {
        const key = `${o.gpu!.kind} ${o.gpu!.model}`;
        offeredFree.set(key, (offeredFree.get(key) ?? 0) + o.gpu!.free);
      }
      const poolFree = new Map<string, number>();
      for (const m of pool.models.filter((x) => x.free > 0)) poolFree.set(`${m.kind} ${m.model}`, (poolFree.get(`${m.kind} ${m.model}`) ?? 0) + m.free);
      expect(Object.fromEntries(poolFree), where).toEqual(Object.fromEntries(offeredFree));
      // Free CPU: what the pool counts is what offers of no GPU list.
      const cpuOffers = await findOffers(testDb.database, { gpus: 0, cpuMillis: 0, memoryMb: 0 }, 10_000);
      expect(pool.cpu.free, where).toBeCloseTo(cpuOffers.reduce((sum, o) => sum + o.cpuFree, 0), 6);
    }
  });

  it('the lease guard refuses a node that stopped taking work after the plan was made', async () => {
    await db().execute(sql`delete from gpus`);
    await db().execute(sql`delete from job_events`);
    await db().execute(sql`delete from jobs`);
    await db().execute(sql`delete from nodes`);
    const nodeId = newId('node');
    await db().insert(nodes).values({
      id: nodeId,
      accountId: providers[0]!,
      name: 'stops-taking-work',
      status: 'online',
      publicKey: { kty: 'OKP', crv: 'Ed25519', x: nodeId },
      cpuMillis: 8000,
      memoryMb: 16_384,
      diskMb: 102_400,
    });
    const now = new Date();
    const { job } = await submitJob(db(), client, JobSpec.parse({ name: 'p', image: 'busybox:latest', command: ['true'], resources: { cpu: 1, memoryMb: 512 } }), undefined, now);
    const state = await loadPassState(db(), now.getTime());
    const { jobs: queued } = await loadQueueBatch(db(), null, 10, null);
    const out = state.place(queued[0]!);
    expect(out.placed && out.node.id).toBe(nodeId);
    // Its agent says it has no runtime any more (a heartbeat with takesWork false), between plan and commit.
    await db().update(nodes).set({ takesWork: false }).where(sql`${nodes.id} = ${nodeId}`);
    const placement = { jobId: job.id, nodeId, gpuIds: [], leaseId: newId('lease'), cpuMillis: 1000, memoryMb: 512, diskMb: 0, priceGpuHourMicros: 0, priceCpuHourMicros: 0 };
    const commit = db().transaction((tx) => leaseJobs(tx, [placement], new Date(now.getTime() + 60_000), now));
    await expect(commit).rejects.toBeInstanceOf(PlacementConflict);
    const [row] = await db().select({ status: jobs.status }).from(jobs).where(sql`${jobs.id} = ${job.id}`);
    expect(row!.status).toBe('queued');
  });

  it('maxParallel: the planner and the lease guard agree, and the guard refuses a plan past it', async () => {
    const rng = generator(16);
    const cases = Array.from({ length: 200 }, () => {
      const maxParallel = rng.int(1, 20);
      return { maxParallel, tasksActive: rng.int(0, maxParallel), taking: rng.int(1, 6) };
    });
    const values = sql.join(cases.map((c, i) => sql`(${i}::int, ${c.tasksActive}::int, ${c.maxParallel}::int, ${c.taking}::int)`), sql`, `);
    const result = (await db().execute(
      sql`select i, ${withinMaxParallel.sql('p', sql`p.taking`)} as ok from (values ${values}) as p(i, tasks_active, max_parallel, taking) order by i`,
    )) as unknown as { i: number; ok: boolean }[] | { rows: { i: number; ok: boolean }[] };
    const bySql = (Array.isArray(result) ? result : result.rows).map((r) => r.ok);
    expect(bySql).toEqual(cases.map((c) => withinMaxParallel.js(c, c.taking)));

    await db().execute(sql`delete from gpus`);
    await db().execute(sql`delete from job_events`);
    await db().execute(sql`delete from jobs`);
    await db().execute(sql`delete from nodes`);
    const nodeId = newId('node');
    await db().insert(nodes).values({
      id: nodeId,
      accountId: providers[0]!,
      name: 'array-node',
      status: 'online',
      publicKey: { kty: 'OKP', crv: 'Ed25519', x: nodeId },
      cpuMillis: 64_000,
      memoryMb: 65_536,
      diskMb: 1_024_000,
    });
    const now = new Date();
    const spec = JobSpec.parse({ name: 'a', image: 'busybox:latest', command: ['true'], resources: { cpu: 1, memoryMb: 512 }, tasks: { count: 5, maxParallel: 2 } });
    const { job: array } = await submitArray(db(), client, spec, undefined, now);
    const { jobs: queued } = await loadQueueBatch(db(), null, 10, null);
    expect(queued.map((q) => q.array?.id)).toEqual(Array(5).fill(array.id));
    // Three tasks in one plan, as a planner that forgot the rule would make.
    const placements = queued.slice(0, 3).map((q) => ({ jobId: q.id, nodeId, gpuIds: [], leaseId: newId('lease'), cpuMillis: 1000, memoryMb: 512, diskMb: 0, priceGpuHourMicros: 0, priceCpuHourMicros: 0, arrayId: array.id }));
    const commit = db().transaction((tx) => leaseJobs(tx, placements, new Date(now.getTime() + 60_000), now));
    await expect(commit).rejects.toBeInstanceOf(PlacementConflict);
    const [row] = await db().select({ active: jobs.tasksActive, status: jobs.status }).from(jobs).where(sql`${jobs.id} = ${array.id}`);
    expect(row).toEqual({ active: 0, status: 'queued' });
    await db().transaction((tx) => leaseJobs(tx, placements.slice(0, 2), new Date(now.getTime() + 60_000), now));
    const [after] = await db().select({ active: jobs.tasksActive, status: jobs.status }).from(jobs).where(sql`${jobs.id} = ${array.id}`);
    expect(after).toEqual({ active: 2, status: 'running' });
  });
});
