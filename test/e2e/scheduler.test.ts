import { deposit } from '../../coordinator/ledger/accounts.ts';
import type { Balance } from '../../shared/ledger.ts';
import { mkdtemp, rm } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { sql } from 'drizzle-orm';
import postgres from 'postgres';
import { migrate } from '../../coordinator/db/migrate.ts';
import { openDatabase, type Database } from '../../coordinator/db/open.ts';
import { accounts, gpus, jobEvents, jobs, nodes } from '../../coordinator/db/schema/index.ts';
import { AgentState } from '../../provider-agent/state.ts';
import { ApiClient, ApiRequestError } from '../../shared/client.ts';
import { newId } from '../../shared/ids.ts';
import type { Job, JobEvent } from '../../shared/jobs.ts';
import type { EnrollmentToken } from '../../shared/nodes.ts';
import { signAgentToken } from '../support/agent-identity.ts';
import { spawnAgent, type AgentProcess } from '../support/agent-process.ts';
import { spawnCoordinator, type CoordinatorProcess } from '../support/coordinator-process.ts';
import { postgresAdminUrl, postgresSkipReason } from '../support/database.ts';
import { createFakeNvidiaSmi, type FakeNvidiaSmi } from '../support/fake-nvidia-smi.ts';
import { InvariantChecker } from '../support/invariants.ts';
import { freePort } from '../support/ports.ts';

// The scheduler and leases with real processes: a coordinator, agents with a fake nvidia-smi and
// the test executor (the job's env says how its run ends), jobs submitted over HTTP. Short lease
// and node TTLs through the coordinator's settings, so that expiries happen in seconds.

const a5000 = ['GPU-12345678-aaaa-bbbb-cccc-0123456789ab', 'GPU-12345678-aaaa-bbbb-cccc-0123456789cd'];

async function until<T>(what: string, fn: () => Promise<T | null | undefined | false>, timeoutMs = 30_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const v = await fn();
      if (v) return v;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}${last ? ` (last error: ${String(last)})` : ''}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

const spec = (over: Record<string, unknown> = {}, resources: Record<string, unknown> = {}) => ({
  name: 'e2e',
  image: 'busybox:latest',
  command: ['true'],
  ...over,
  resources: { cpu: 1, memoryMb: 256, gpus: 1, ...resources },
});

describe('scheduler end to end: coordinator and agents as processes (PGlite)', () => {
  let work: string;
  let coordinator: CoordinatorProcess;
  let url: string;
  let adminKey: string;
  let client: ApiClient;
  let provider: ApiClient;
  let a5000Fake: FakeNvidiaSmi;
  let k80Fake: FakeNvidiaSmi;
  let rtx4090Fake: FakeNvidiaSmi;
  const agents: AgentProcess[] = [];
  let port = 0;
  const coordinatorEnv = () => ({
    PORT: String(port),
    HOST: '127.0.0.1',
    GANTRY_DATA_DIR: path.join(work, 'coordinator'),
    GANTRY_NAME: 'gantry-e2e',
    // A node goes offline before its leases expire, so an expired job is not placed on it again.
    GANTRY_LEASE_TTL_SECONDS: '15',
    GANTRY_NODE_TTL_SECONDS: '2',
    GANTRY_LOG_REQUESTS: 'false',
    GANTRY_SCHEDULER_TICK_MS: '1000',
  });
  const job = (id: string) => client.get<Job>(`/v1/jobs/${id}`);
  const events = async (id: string) => (await client.get<{ items: JobEvent[] }>(`/v1/jobs/${id}/events`)).items;
  const join = async (name: string, fake: FakeNvidiaSmi, extra: string[] = []) => {
    const { token } = await provider.post<EnrollmentToken>('/v1/enrollment-tokens', {});
    const stateDir = path.join(work, name);
    const a = spawnAgent(
      ['join', '--coordinator', url, '--token', token, '--state-dir', stateDir, '--name', name, '--run', '--test-executor', '--heartbeat-seconds', '0.5', ...extra],
      { PATH: `${fake.path}${path.delimiter}${process.env.PATH}`, GANTRY_AGENT_STATE_DIR: '' },
    );
    agents.push(a);
    const line = await a.waitForLine(/^Joined .* as node (node_\w+)/, 30_000);
    await a.waitForLine(/connected to the coordinator/);
    return { agent: a, nodeId: line.match(/as node (node_\w+)/)![1]!, stateDir };
  };

  beforeAll(async () => {
    work = await mkdtemp(path.join(tmpdir(), 'gantry-sched-e2e-'));
    port = await freePort();
    a5000Fake = await createFakeNvidiaSmi({ xml: 'rtx-a5000-x2-v13.xml' });
    k80Fake = await createFakeNvidiaSmi({ xml: 'tesla-k80-x4-azure-v10.xml' });
    // Each machine has GPUs of its own: a GPU another node registered is refused.
    rtx4090Fake = await createFakeNvidiaSmi({ xml: 'rtx4090-v12.xml' });
    coordinator = spawnCoordinator(coordinatorEnv());
    const ready = await coordinator.ready;
    url = ready.url;
    adminKey = ready.adminKey!;
    const admin = new ApiClient({ baseUrl: url, token: adminKey });
    const mk = async (kind: 'client' | 'provider') => {
      const acct = await admin.post<{ id: string }>('/v1/accounts', { name: `e2e-${kind}`, kind });
      const { key } = await admin.post<{ key: string }>(`/v1/accounts/${acct.id}/keys`, { scopes: [kind] });
      // Credit for the priced nodes' leases to hold.
      if (kind === 'client') await admin.post(`/v1/accounts/${acct.id}/credits`, { amount: 1000, reference: 'e2e' });
      return new ApiClient({ baseUrl: url, token: key });
    };
    client = await mk('client');
    provider = await mk('provider');
  });
  afterAll(async () => {
    for (const a of agents) await a.kill();
    await coordinator?.stop();
    await a5000Fake?.cleanup();
    await k80Fake?.cleanup();
    await rtx4090Fake?.cleanup();
    if (work) await rm(work, { recursive: true, force: true });
  });

  let nodeA: Awaited<ReturnType<typeof join>>;

  it('leases a job to the right GPUs of the agent that fits, which runs it and reports it succeeded', async () => {
    nodeA = await join('rig-a', a5000Fake, ['--price-gpu-hour', '0.9', '--label', 'rack=r1']);
    const submitted = await client.post<Job>('/v1/jobs', spec({ env: { GANTRY_TEST_SLEEP_MS: '300' } }, { gpus: 2, gpu: { model: 'RTX A5000' } }));
    const done = await until('the job to succeed', async () => {
      const j = await job(submitted.id);
      return j.status === 'succeeded' ? j : null;
    });
    expect(done.nodeId).toBe(nodeA.nodeId);
    expect([...done.gpuIds!].sort()).toEqual(a5000);
    expect(done.exitCode).toBe(0);
    expect((await events(submitted.id)).map((e) => [e.from, e.to])).toEqual([
      [null, 'queued'],
      ['queued', 'leased'],
      ['leased', 'running'],
      ['running', 'succeeded'],
    ]);
    await nodeA.agent.waitForLine(new RegExp(`job reported .*${submitted.id}.*"status":"succeeded"`));
  });

  it('holds credit for leases: no credit waits with the reason, a deposit runs it at exactly its cost, too little credit stops a long job at a renewal', async () => {
    const admin = new ApiClient({ baseUrl: url, token: adminKey });
    const poor = async (name: string) => {
      const acct = await admin.post<{ id: string }>('/v1/accounts', { name, kind: 'client' });
      const { key } = await admin.post<{ key: string }>(`/v1/accounts/${acct.id}/keys`, { scopes: ['client'] });
      return { id: acct.id, api: new ApiClient({ baseUrl: url, token: key }) };
    };
    const balance = async (api: ApiClient) => (await api.get<Balance>('/v1/balance'));
    const onA = (sleepMs: number) => spec({ env: { GANTRY_TEST_SLEEP_MS: String(sleepMs) }, constraints: { nodeId: nodeA.nodeId } }, { gpus: 1 });
    const earnedBefore = (await balance(provider)).provider!.earned;

    // 0.90/hour for one lease TTL (15 s) is 0.00375.
    const c1 = await poor('e2e-no-credit');
    const waiting = await c1.api.post<Job>('/v1/jobs', onA(1500));
    await until('the credit reason', async () => (await c1.api.get<Job>(`/v1/jobs/${waiting.id}`)).pendingReason === 'needs 0.00375 of credit for its first 15 seconds at 0.90/hour, 0.00 available');
    await admin.post(`/v1/accounts/${c1.id}/credits`, { amount: 0.05, reference: 'top-up' });
    const done = await until('the job to succeed', async () => {
      const j = await c1.api.get<Job>(`/v1/jobs/${waiting.id}`);
      return j.status === 'succeeded' ? j : null;
    });
    expect(done.cost).toBeGreaterThan(0);
    expect((await balance(c1.api)).client).toEqual({ balance: Number((0.05 - done.cost).toFixed(6)), held: 0, available: Number((0.05 - done.cost).toFixed(6)), creditLimit: 0 });
    expect(Number(((await balance(provider)).provider!.earned - earnedBefore).toFixed(6))).toBe(done.cost);

    // Credit for its first lease only: the renewal after one billing period (7 s) cannot hold the
    // next, the lease is not extended, the agent stops the job at its end, and it ends failed (credit).
    const c2 = await poor('e2e-little-credit');
    await admin.post(`/v1/accounts/${c2.id}/credits`, { amount: 0.00375, reference: 'just-one-lease' });
    const long = await c2.api.post<Job>('/v1/jobs', onA(120_000));
    const stopped = await until('the long job to end', async () => {
      const j = await c2.api.get<Job>(`/v1/jobs/${long.id}`);
      return j.status === 'failed' ? j : null;
    }, 60_000);
    expect(stopped.error).toMatch(/^credit: /);
    expect(stopped.attempts).toBe(1);
    const after = (await balance(c2.api)).client!;
    expect(after.held).toBe(0);
    expect(after.balance).toBeGreaterThanOrEqual(0);
    expect(after.balance).toBe(Number((0.00375 - stopped.cost).toFixed(6)));
    await nodeA.agent.waitForLine(new RegExp(`lease expired without renewal.*${long.id}`));
  }, 120_000);

  it('keeps a job that fits nowhere queued with its reason, and honours price and label constraints', async () => {
    const big = await client.post<Job>('/v1/jobs', spec({}, { gpus: 4 }));
    const pricey = await client.post<Job>('/v1/jobs', spec({ maxPricePerHour: 1.5 }, { gpus: 2 }));
    const otherRack = await client.post<Job>('/v1/jobs', spec({ constraints: { nodeLabels: { rack: 'r2' } } }));
    const fits = await client.post<Job>('/v1/jobs', spec({ maxPricePerHour: 1, constraints: { nodeLabels: { rack: 'r1' } } }));
    const reasonOf = (id: string, want: string) => until(`the reason of ${id}`, async () => ((await job(id)).pendingReason === want ? true : null), 15_000);
    await reasonOf(big.id, 'no online node has 4 free GPUs');
    await reasonOf(pricey.id, 'no online node has 2 free GPUs within 1.50/hour; 1 would fit without the price limit');
    await reasonOf(otherRack.id, 'no online node with labels rack=r2 has 1 free GPU');
    const ran = await until('the job that fits to succeed', async () => {
      const j = await job(fits.id);
      return j.status === 'succeeded' ? j : null;
    });
    expect(ran.nodeId).toBe(nodeA.nodeId);
    for (const j of [big, pricey, otherRack]) expect((await job(j.id)).status).toBe('queued');
    for (const j of [big, pricey, otherRack]) await client.post(`/v1/jobs/${j.id}/cancel`);
  });

  it('re-queues the job of a killed agent when its lease expires, runs it on a second agent, and refuses the late report of the first', async () => {
    const submitted = await client.post<Job>('/v1/jobs', spec({ env: { GANTRY_TEST_SLEEP_MS: '4000' } }));
    const onA = await until('the job to run on rig-a', async () => {
      const j = await job(submitted.id);
      return j.status === 'running' ? j : null;
    });
    expect(onA.nodeId).toBe(nodeA.nodeId);
    await nodeA.agent.kill('SIGKILL');
    const requeued = await until('the lease to expire', async () => ((await events(submitted.id)).some((e) => e.from === 'running' && e.to === 'queued') ? true : null), 30_000);
    expect(requeued).toBe(true);
    const b = await join('rig-b', k80Fake);
    const done = await until('the job to succeed on rig-b', async () => {
      const j = await job(submitted.id);
      return j.status === 'succeeded' ? j : null;
    }, 30_000);
    expect(done.nodeId).toBe(b.nodeId);
    expect(done.attempts).toBe(2);
    expect(done.leaseEpoch).toBeGreaterThan(onA.leaseEpoch);
    const trail = await events(submitted.id);
    expect(trail.map((e) => `${e.from}->${e.to}`)).toEqual(['null->queued', 'queued->leased', 'leased->running', 'running->queued', 'queued->leased', 'leased->running', 'running->succeeded']);
    expect(trail[3]!.reason).toContain('expired');
    expect(trail[4]!.reason).toContain(b.nodeId);

    // rig-a comes back from the dead with the old epoch: the job is rig-b's now, so to rig-a it is
    // 404 (as if it did not exist: coordinator/jobs/transitions.ts), and nothing changes.
    const key = (await new AgentState(nodeA.stateDir).loadKey())!;
    const token = await signAgentToken(key.privateKey, { sub: nodeA.nodeId, aud: 'gantry-e2e' });
    const late = new ApiClient({ baseUrl: url, token });
    const err = await late.post(`/v1/agent/jobs/${submitted.id}/finish`, { epoch: onA.leaseEpoch, reason: 'nonzero-exit', exitCode: 1 }).catch((e) => e);
    expect(err).toBeInstanceOf(ApiRequestError);
    expect((err as ApiRequestError).status).toBe(404);
    expect((err as ApiRequestError).problem?.code).toBe('not_found');
    expect(await job(submitted.id)).toEqual(done);
    await b.agent.kill('SIGTERM');
  }, 120_000);

  it('an agent cut off from the coordinator stops the job at its lease expiry; the restarted coordinator waits a TTL, then re-queues it', async () => {
    const c = await join('rig-c', rtx4090Fake);
    const submitted = await client.post<Job>('/v1/jobs', spec({ env: { GANTRY_TEST_OUTCOME: 'hang' } }));
    const running = await until('the job to run', async () => {
      const j = await job(submitted.id);
      return j.status === 'running' ? j : null;
    });
    await coordinator.stop(0);
    // The agent keeps it until the lease it last renewed ends (15 s), then stops it, reporting nothing.
    await c.agent.waitForLine(/lease expired without renewal: stopping the job/, 30_000);
    // Its reports were retrying with a backoff grown over the outage: the run ends at their next try.
    await c.agent.waitForLine(/job stopped without a report .*lease-expired/, 30_000);
    coordinator = spawnCoordinator(coordinatorEnv());
    url = (await coordinator.ready).url;
    client = new ApiClient({ baseUrl: url, token: client.opts.token as string });
    const started = Date.now();
    // The job is taken back only after the new coordinator's grace (one TTL), then placed again.
    await until('the job to be re-queued and leased again', async () => ((await job(submitted.id)).attempts === running.attempts + 1 ? true : null), 45_000);
    expect(Date.now() - started).toBeGreaterThanOrEqual(14_000);
    expect((await events(submitted.id)).some((e) => e.from === 'running' && e.to === 'queued')).toBe(true);
    await client.post(`/v1/jobs/${submitted.id}/cancel`);
    await until('the cancel to reach the agent and end the job', async () => ((await job(submitted.id)).status === 'cancelled' ? true : null));
  }, 120_000);
});

// ---------------------------------------------------------------------------------------------
// PostgreSQL: kills in the middle of placements, and two coordinators taking turns.

const pgSkip = await postgresSkipReason('scheduler e2e on PostgreSQL');

describe.skipIf(pgSkip)('scheduler end to end on PostgreSQL: coordinators killed mid-batch and in turn', () => {
  let dbName: string;
  let dbUrl: string;
  let database: Database;
  let admin: ReturnType<typeof postgres>;
  const running: CoordinatorProcess[] = [];
  const invariants = new InvariantChecker();

  beforeAll(async () => {
    dbName = `gantry_e2e_${randomBytes(5).toString('hex')}`;
    admin = postgres(postgresAdminUrl, { max: 1, onnotice: () => {} });
    await admin.unsafe(`create database ${dbName}`);
    dbUrl = postgresAdminUrl.replace(/\/[^/]*$/, `/${dbName}`);
    database = await openDatabase({ databaseUrl: dbUrl, poolSize: 4 });
    await migrate(database);
  });
  afterAll(async () => {
    for (const c of running) await c.stop(0);
    await database?.close();
    await admin?.unsafe(`drop database if exists ${dbName} with (force)`);
    await admin?.end({ timeout: 5 });
  });

  const start = (extra: Record<string, string> = {}) => {
    const c = spawnCoordinator({
      PORT: '0',
      HOST: '127.0.0.1',
      DATABASE_URL: dbUrl,
      GANTRY_NAME: 'gantry-pg-e2e',
      GANTRY_LEASE_TTL_SECONDS: '15',
      GANTRY_LOG_REQUESTS: 'false',
      GANTRY_SCHEDULER_TICK_MS: '500',
      // Nodes here have no agents: only the scheduler and the sweeper act.
      GANTRY_NODE_TTL_SECONDS: '86400',
      ...extra,
    });
    running.push(c);
    return c;
  };

  /** Nodes with GPUs and queued jobs straight into the tables, as registration and submits write them. */
  async function seed(nodeCount: number, gpusPerNode: number, jobCount: number, maxAttempts: number) {
    const { db } = database;
    const providerId = newId('account');
    const clientId = newId('account');
    await db.insert(accounts).values([
      { id: providerId, name: 'p', kind: 'provider' },
      { id: clientId, name: 'c', kind: 'client' },
    ]);
    // Credit for every lease the placements hold.
    await deposit(db, clientId, 1_000_000, 'seed', new Date());
    const nodeRows = Array.from({ length: nodeCount }, (_, i) => ({
      id: newId('node'),
      accountId: providerId,
      name: `n${i}`,
      status: 'online' as const,
      publicKey: { kty: 'OKP', crv: 'Ed25519', x: `k${i}` },
      cpuMillis: 64_000,
      memoryMb: 512_000,
      diskMb: 5_000_000,
      priceGpuHourMicros: 100_000 * (1 + (i % 7)),
      lastHeartbeatAt: new Date(),
    }));
    await db.insert(nodes).values(nodeRows);
    await db.insert(gpus).values(
      nodeRows.flatMap((n, i) =>
        Array.from({ length: gpusPerNode }, (_, g) => ({ nodeId: n.id, id: `GPU-${i}-${g}-${randomBytes(4).toString('hex')}`, index: g, uuid: `GPU-${i}-${g}`, model: 'NVIDIA L4', memoryMb: 23_034 })),
      ),
    );
    for (let k = 0; k < jobCount; k += 500) {
      const rows = Array.from({ length: Math.min(500, jobCount - k) }, (_, i) => {
        const n = 1 + ((k + i) % 3);
        const s = { name: `j${k + i}`, image: 'busybox:latest', command: ['true'], resources: { cpu: n, memoryMb: 1024 * n, diskMb: 10_240, gpus: n }, maxAttempts, priority: 0, timeoutSeconds: 60, network: 'bridge' as const };
        const at = new Date(Date.now() - 10_000 + k + i);
        return { id: newId('job', at.getTime()), accountId: clientId, name: s.name, spec: s, specDigest: `sha256:${'0'.repeat(64)}`, status: 'queued' as const, cpuMillis: n * 1000, memoryMb: 1024 * n, gpuCount: n, maxAttempts, createdAt: at, updatedAt: at };
      });
      await db.insert(jobs).values(rows);
      await db.insert(jobEvents).values(rows.map((r) => ({ jobId: r.id, fromStatus: null, toStatus: 'queued', reason: 'submitted', at: r.createdAt })));
    }
  }

  const leasedCount = async () => Number((await database.rows<{ n: number }>(sql`select count(*)::int as n from ${jobs} where status = 'leased'`))[0]!.n);

  it('a coordinator killed in the middle of a placement batch leaves nothing half-done', async () => {
    await seed(1500, 4, 8000, 20);
    const c = start({ GANTRY_SCHEDULER_BATCH_SIZE: '100', GANTRY_LEASE_TTL_SECONDS: '300' });
    // Kill it while a placement transaction is open (its writes to nodes, GPUs, jobs under way):
    // polled without pause, since a batch lasts milliseconds.
    const probe = postgres(dbUrl, { max: 1, onnotice: () => {}, connection: { application_name: 'e2e-probe' } });
    const deadline = Date.now() + 60_000;
    // After some batches committed, so that the kill lands in the middle of a pass.
    for (;;) {
      const [row] = await probe`select count(*)::int as n from jobs where status = 'leased'`;
      if (Number(row!.n) > 0) break;
      if (Date.now() > deadline) throw new Error('nothing was placed');
    }
    for (;;) {
      const [row] = await probe`select count(*)::int as n from pg_stat_activity
        where datname = current_database() and application_name = 'gantry' and state = 'idle in transaction'
          and (query like 'update "gpus"%' or query like 'update "jobs"%' or query like 'update "nodes"%')`;
      if (Number(row!.n) > 0) break;
      if (Date.now() > deadline) throw new Error('never saw a placement transaction in flight');
    }
    c.child.kill('SIGKILL');
    await c.exited;
    // PostgreSQL rolls the open transaction back when its session dies: wait for the dead
    // coordinator's sessions to go (this test's own sessions are the only 'gantry' ones left).
    await database.close();
    await until('the dead sessions to go', async () => {
      const [row] = await probe`select count(*)::int as n from pg_stat_activity where datname = current_database() and application_name = 'gantry'`;
      return Number(row!.n) === 0;
    });
    await probe.end();
    database = await openDatabase({ databaseUrl: dbUrl, poolSize: 4 });
    await invariants.check(database.db);
    const placed = await leasedCount();
    expect(placed).toBeGreaterThan(0);
    // Every committed batch is whole: its jobs, their GPUs and the nodes' allocations agree (checked above).
    const [{ n: eventsLeased }] = (await database.rows<{ n: number }>(sql`select count(*)::int as n from ${jobEvents} where to_status = 'leased'`)) as [{ n: number }];
    expect(Number(eventsLeased)).toBe(placed);
  }, 120_000);

  it('two coordinators on one database, killed in turn, never place one job twice or one GPU in two jobs', async () => {
    // The leases of the first test lapse now, as if their nodes went silent long ago.
    await database.db.update(jobs).set({ leaseExpiresAt: new Date(Date.now() - 1000) }).where(sql`${jobs.status} = 'leased'`);
    const a = start();
    const b = start();
    await Promise.all([a.ready, b.ready]);
    let before = Number(((await database.rows<{ n: number }>(sql`select count(*)::int as n from ${jobEvents} where to_status = 'leased'`))[0] as { n: number }).n);
    const progress = async (what: string) => {
      // The survivor takes over within seconds: placements go on (expired leases come back and are placed again).
      await until(what, async () => {
        const { n } = (await database.rows<{ n: number }>(sql`select count(*)::int as n from ${jobEvents} where to_status = 'leased'`))[0] as { n: number };
        return Number(n) > before ? true : null;
      }, 45_000);
      before = Number(((await database.rows<{ n: number }>(sql`select count(*)::int as n from ${jobEvents} where to_status = 'leased'`))[0] as { n: number }).n);
      await invariants.check(database.db);
    };
    await progress('placements with both running');
    a.child.kill('SIGKILL');
    await a.exited;
    await progress('placements after the first is killed');
    const a2 = start();
    await a2.ready;
    b.child.kill('SIGKILL');
    await b.exited;
    await progress('placements after the second is killed');
    const b2 = start();
    await b2.ready;
    a2.child.kill('SIGKILL');
    await a2.exited;
    await progress('placements after the third is killed');
    await b2.stop();
    await invariants.check(database.db);
    // Every placement of a job came after the end of the one before it (the events replay), and
    // each was at a new epoch.
    const rows = await database.rows<{ id: string; epochs: number; leases: number }>(
      sql`select j.id, j.lease_epoch as epochs, count(e.id)::int as leases from ${jobs} j join ${jobEvents} e on e.job_id = j.id and e.to_status = 'leased' group by j.id, j.lease_epoch`,
    );
    for (const r of rows) expect(Number(r.leases)).toBeLessThanOrEqual(Number(r.epochs));
    expect(rows.some((r) => Number(r.leases) > 1)).toBe(true);
  }, 240_000);
});
