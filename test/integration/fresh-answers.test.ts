import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { eq } from 'drizzle-orm';
import { jobs, nodes } from '../../coordinator/db/schema/index.ts';
import type { HardwareReport } from '../../shared/hardware.ts';
import type { Job } from '../../shared/jobs.ts';
import type { EnrollmentToken, RegisteredNode } from '../../shared/nodes.ts';
import type { Pool } from '../../shared/pool.ts';
import { a5000Machine, newAgentKey } from '../support/agent-identity.ts';
import { insertNode, insertProvider, jobSpec } from '../support/factories.ts';
import { loadConfig } from '../../coordinator/config.ts';
import { openDatabase } from '../../coordinator/db/open.ts';
import { silentLogger } from '../../coordinator/log.ts';
import { startCoordinator } from '../../coordinator/server.ts';
import { ApiClient } from '../../shared/client.ts';
import { dbSkipReason, itOn, startHarness, type Harness } from '../support/harness.ts';
import { until } from '../support/until.ts';

// What a client sees right after nodes change: the scheduler and GET /v1/pool answer on what is
// there now, not on a reading kept from before (the scheduler's node snapshot, the pool's cache).

let machines = 0;

describe.skipIf(dbSkipReason)('answers right after nodes change', () => {
  let h: Harness;
  let provider: Awaited<ReturnType<Harness['newAccount']>>;
  let client: Awaited<ReturnType<Harness['newAccount']>>;
  const db = () => h.coordinator.deps.database.db;

  /** A machine joining through the API, as `gantry-agent join` does, with one model of GPU at one price. */
  async function join(model: string, pricePerGpuHour: number, gpuCount = 1, via = h.client()): Promise<string> {
    const { token } = await provider.api.post<EnrollmentToken>('/v1/enrollment-tokens', {});
    const { publicJwk } = await newAgentKey();
    const machine = a5000Machine(`f${++machines}`, gpuCount);
    const hardware: HardwareReport = { ...machine, gpus: machine.gpus.map((g) => ({ ...g, model })) };
    const reg = await via.post<RegisteredNode>('/v1/agent/register', { token, publicKey: publicJwk, hardware, priceGpuHour: pricePerGpuHour });
    return reg.nodeId;
  }
  const leased = (id: string) => until(`job ${id} leased`, async () => {
    const j = await client.api.get<Job>(`/v1/jobs/${id}`);
    return j.status === 'leased' ? j : null;
  }, 20_000);
  const pool = () => client.api.get<Pool>('/v1/pool');

  beforeAll(async () => {
    // The cache age and scheduler tick as shipped: what the client of the issue met.
    h = await startHarness({ GANTRY_SCHEDULER_TICK_MS: '60000' });
  });
  afterAll(async () => h?.close());
  beforeEach(async () => {
    // Each test sees only its own nodes.
    await db().update(nodes).set({ status: 'offline' });
    await db().update(jobs).set({ status: 'cancelled' }).where(eq(jobs.status, 'queued'));
    provider = await h.newAccount('provider');
    client = await h.newAccount('client');
  });

  it('a job submitted right after three nodes joined goes to the cheapest of them', async () => {
    const a5000 = await join('NVIDIA RTX A5000', 1.2, 2);
    // The scheduler places a first job on the A5000, the one node there: it has read the nodes now.
    const first = await client.api.post<Job>('/v1/jobs', jobSpec({ name: 'first' }, { gpus: 1 }));
    expect((await leased(first.id)).nodeId).toBe(a5000);
    const rtx4090 = await join('NVIDIA GeForce RTX 4090', 0.6);
    const t4 = await join('Tesla T4', 0.3);
    const dryRun = await client.api.post<{ offers: { nodeId: string }[] }>('/v1/jobs/dry-run', jobSpec({ name: 'cheap' }, { gpus: 1 }));
    expect(dryRun.offers.map((o) => o.nodeId)).toEqual([t4, rtx4090, a5000]);
    const job = await client.api.post<Job>('/v1/jobs', jobSpec({ name: 'cheap' }, { gpus: 1 }));
    expect((await leased(job.id)).nodeId).toBe(t4);
  });

  itOn('postgres')('nodes that join through another replica are seen by the active scheduler at once', async () => {
    const database = await openDatabase({ databaseUrl: h.testDb.url!, poolSize: 4 });
    const config = loadConfig({ PORT: '0', HOST: '127.0.0.1', GANTRY_LOG_REQUESTS: 'false', GANTRY_SHUTDOWN_GRACE_MS: '1000', GANTRY_SCHEDULER_TICK_MS: '60000' });
    const replica = await startCoordinator({ config: { ...config, name: h.coordinator.deps.config.name }, log: silentLogger, database });
    try {
      expect(replica.deps.scheduler.isLeader).toBe(false);
      const viaReplica = new ApiClient({ baseUrl: replica.url });
      const a5000 = await join('NVIDIA RTX A5000', 1.2, 2, viaReplica);
      const first = await client.api.post<Job>('/v1/jobs', jobSpec({ name: 'first' }, { gpus: 1 }));
      expect((await leased(first.id)).nodeId).toBe(a5000);
      await join('NVIDIA GeForce RTX 4090', 0.6, 1, viaReplica);
      const t4 = await join('Tesla T4', 0.3, 1, viaReplica);
      const job = await client.api.post<Job>('/v1/jobs', jobSpec({ name: 'cheap' }, { gpus: 1 }));
      expect((await leased(job.id)).nodeId).toBe(t4);
    } finally {
      await replica.close();
      await database.close();
    }
  });

  it('a pool read right after a node joined counts it', async () => {
    await pool(); // what a reader saw before: cached
    await join('NVIDIA RTX A5000', 1.2, 2);
    // The only node online (beforeEach took the others offline).
    const after = await pool();
    expect(after.nodes.online).toBe(1);
    expect(after.gpus.free).toBe(2);
  });

  it('no pool read gets figures older than GANTRY_POOL_CACHE_MS', async () => {
    const cacheMs = h.coordinator.deps.config.poolCacheMs;
    await pool(); // what a reader saw before: cached
    // A node written straight into the tables: no event tells the cache, only its age can.
    await insertNode(db(), { accountId: await insertProvider(db()), gpus: [{ model: 'NVIDIA H100 80GB HBM3' }] }, { audience: h.coordinator.deps.config.name });
    const writtenAt = performance.now();
    await until('the cache age to pass', () => performance.now() - writtenAt > cacheMs + 10);
    const after = await pool();
    expect(after.nodes.online).toBe(1);
    expect(after.gpus.free).toBe(1);
  });
});
