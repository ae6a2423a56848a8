import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { and, eq, inArray, sql } from 'drizzle-orm';
import tarStream from 'tar-stream';
import { jobs, nodes } from '../../coordinator/db/schema/index.ts';
import { systemClock } from '../../coordinator/clock.ts';
import { LeaseSweeper } from '../../coordinator/leases/sweeper.ts';
import { silentLogger } from '../../coordinator/log.ts';
import { schedulePass } from '../../coordinator/scheduler/placement.ts';
import type { Job } from '../../shared/jobs.ts';
import type { LeaseClaims, Work } from '../../shared/leases.ts';
import { dbSkipReason, startHarness, type Harness } from '../support/harness.ts';
import { insertNode, insertProvider, jobSpec, type TestAgent } from '../support/factories.ts';
import { expectProblem } from '../support/problem.ts';

// Job arrays through the real coordinator: one submit of many tasks, the array's counts and
// status as its tasks move, maxParallel under concurrent passes, cancel, idempotency, paging.

type Page = { items: Job[]; nextCursor: string | null };

async function collect(source: AsyncIterable<Buffer>): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of source) chunks.push(c);
  return Buffer.concat(chunks);
}

describe.skipIf(dbSkipReason)('job arrays', () => {
  let h: Harness;
  let client: Awaited<ReturnType<Harness['newAccount']>>;
  const db = () => h.coordinator.deps.database.db;
  const node = async (spec: Omit<Parameters<typeof insertNode>[1], 'accountId'> = {}) =>
    insertNode(db(), { accountId: await insertProvider(db()), ...spec }, { audience: h.coordinator.deps.config.name, baseUrl: h.url });
  const submitArray = (tasks: Record<string, unknown>, over: Record<string, unknown> = {}) =>
    client.api.post<Job>('/v1/jobs', jobSpec({ name: 'sweep', ...over, tasks }));
  const job = (id: string) => client.api.get<Job>(`/v1/jobs/${id}`);
  const pass = async () => {
    await h.coordinator.deps.scheduler.idle();
    return h.coordinator.deps.scheduler.runPass();
  };
  const live = async (arrayId: string) =>
    (await db().select({ n: sql<number>`count(*)::int` }).from(jobs).where(and(eq(jobs.parentId, arrayId), inArray(jobs.status, ['leased', 'running']))))[0]!.n;
  /** The agent's reports for each task it holds: running, then its end. */
  async function finishAll(agent: TestAgent, reason: (t: Job) => 'succeeded' | 'nonzero-exit' = () => 'succeeded') {
    const work = await agent.api.get<Work>('/v1/agent/work?wait=0');
    for (const l of work.leases) {
      const t = await job(l.jobId);
      await agent.api.post(`/v1/agent/jobs/${l.jobId}/running`, { epoch: l.epoch });
      await agent.api.post(`/v1/agent/jobs/${l.jobId}/finish`, { epoch: l.epoch, reason: reason(t), exitCode: reason(t) === 'succeeded' ? 0 : 1 });
    }
    return work.leases.length;
  }

  beforeAll(async () => {
    h = await startHarness({ GANTRY_SCHEDULER_TICK_MS: '60000' });
  });
  afterAll(async () => h?.close());
  beforeEach(async () => {
    await db().update(nodes).set({ status: 'offline' });
    await db().update(jobs).set({ status: 'cancelled' }).where(eq(jobs.status, 'queued'));
    client = await h.newAccount('client');
  });

  it('makes one job per task in one submit, lists the array (not its tasks) and pages its tasks', async () => {
    const array = await submitArray({ count: 120, maxParallel: 4 });
    expect(array.status).toBe('queued');
    expect(array.tasks).toEqual({ count: 120, maxParallel: 4, queued: 120, leased: 0, running: 0, succeeded: 0, failed: 0, cancelled: 0 });
    const list = await client.api.get<Page>('/v1/jobs');
    expect(list.items.map((j) => j.id)).toEqual([array.id]);
    const first = await client.api.get<Page>(`/v1/jobs/${array.id}/tasks?limit=50`);
    expect(first.items.map((t) => t.taskIndex)).toEqual([...Array(50).keys()]);
    expect(first.items.every((t) => t.parentId === array.id && t.status === 'queued' && t.spec.tasks === undefined)).toBe(true);
    const rest = [];
    for (let cursor = first.nextCursor; cursor; ) {
      const page = await client.api.get<Page>(`/v1/jobs/${array.id}/tasks?limit=50&cursor=${cursor}`);
      rest.push(...page.items);
      cursor = page.nextCursor;
    }
    expect(rest.map((t) => t.taskIndex)).toEqual([...Array(70).keys()].map((i) => i + 50));
    // One stored spec: the tasks' rows keep a stub, not the spec.
    const [stub] = await db().select({ spec: jobs.spec }).from(jobs).where(eq(jobs.parentId, array.id)).limit(1);
    expect(stub!.spec).not.toHaveProperty('command');
    // Another tenant sees nothing of it.
    const other = await h.newAccount('client');
    await expect(other.api.get(`/v1/jobs/${array.id}/tasks`)).rejects.toMatchObject({ status: 404 });
    await expect(other.api.get(`/v1/jobs/${array.id}`)).rejects.toMatchObject({ status: 404 });
  });

  it('refuses counts and maxParallel past their limits with a 400 problem', async () => {
    for (const tasks of [{ count: 0 }, { count: 10_001 }, { count: 5, maxParallel: 6 }, { count: 5, maxParallel: 0 }, { count: 2, extra: 1 }]) {
      const res = await h.fetch('/v1/jobs', { method: 'POST', key: client.key, headers: { 'content-type': 'application/json' }, body: JSON.stringify(jobSpec({ tasks })) });
      expect(res.status, JSON.stringify(tasks)).toBe(400);
      expect(res.headers.get('content-type')).toContain('application/problem+json');
    }
    const digest = `sha256:${'a'.repeat(64)}`;
    const res = await h.fetch('/v1/jobs', {
      method: 'POST',
      key: client.key,
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify(jobSpec({ tasks: { count: 3 }, inputs: [{ path: 'x', perTask: [digest, digest] }] })),
    });
    await expectProblem(res, { status: 400, code: 'validation', title: 'Invalid request', errors: [{ path: 'inputs.0.perTask', message: 'one digest per task' }] });
    expect((await client.api.get<Page>('/v1/jobs')).items).toEqual([]);
  });

  it('runs at most maxParallel tasks at once, signs each lease with its index, and succeeds when all did', async () => {
    const agent = await node({ cpu: 64, memoryMb: 1_000_000 });
    const array = await submitArray({ count: 7, maxParallel: 3 });
    const other = await client.api.post<Job>('/v1/jobs', jobSpec({ name: 'behind' }));
    await pass();
    expect(await live(array.id)).toBe(3);
    // The array does not hold up the job behind it.
    expect((await job(other.id)).status).toBe('leased');
    const running = await job(array.id);
    expect(running.status).toBe('running');
    expect(running.tasks).toMatchObject({ queued: 4, leased: 3 });
    const work = await agent.api.get<Work>('/v1/agent/work?wait=0');
    const claims = work.leases.map((l) => JSON.parse(Buffer.from(l.token.split('.')[1]!, 'base64url').toString()) as LeaseClaims);
    const tasks = claims.filter((c) => c.sub !== other.id);
    expect(tasks.map((c) => c.task).sort((a, b) => a!.index - b!.index)).toEqual([0, 1, 2].map((index) => ({ index, count: 7 })));
    expect(claims.find((c) => c.sub === other.id)!.task).toBeUndefined();
    for (let rounds = 0; (await job(array.id)).status === 'running' && rounds < 10; rounds++) {
      await finishAll(agent);
      await pass();
      expect(await live(array.id)).toBeLessThanOrEqual(3);
    }
    const done = await job(array.id);
    expect(done.status).toBe('succeeded');
    expect(done.tasks).toMatchObject({ succeeded: 7, queued: 0 });
    expect(done.finishedAt).not.toBeNull();
    const events = await client.api.get<{ items: { from: string | null; to: string }[] }>(`/v1/jobs/${array.id}/events`);
    expect(events.items.map((e) => `${e.from}>${e.to}`)).toEqual(['null>queued', 'queued>running', 'running>succeeded']);
    // A task's history begins with its array's submit (no submit event of its own is written).
    const task = (await client.api.get<Page>(`/v1/jobs/${array.id}/tasks?limit=1`)).items[0]!;
    const taskEvents = await client.api.get<{ items: { from: string | null; to: string; reason: string }[] }>(`/v1/jobs/${task.id}/events`);
    expect(taskEvents.items.map((e) => `${e.from}>${e.to}`)).toEqual(['null>queued', 'queued>leased', 'leased>running', 'running>succeeded']);
    expect(taskEvents.items[0]!.reason).toMatch(/an array of 7 tasks/);
  });

  it('ends failed when a task fails for good, and failFast cancels the rest at the first failure', async () => {
    const agent = await node({ cpu: 64, memoryMb: 1_000_000 });
    const slow = await submitArray({ count: 3 }, { maxAttempts: 1 });
    await pass();
    await finishAll(agent, (t) => (t.taskIndex === 1 ? 'nonzero-exit' : 'succeeded'));
    expect(await job(slow.id)).toMatchObject({ status: 'failed', tasks: { succeeded: 2, failed: 1 } });

    const fast = await submitArray({ count: 6, maxParallel: 2, failFast: true }, { maxAttempts: 1 });
    await pass();
    const work = await agent.api.get<Work>('/v1/agent/work?wait=0');
    const [first, second] = work.leases;
    await agent.api.post(`/v1/agent/jobs/${first!.jobId}/finish`, { epoch: first!.epoch, reason: 'nonzero-exit', exitCode: 3 });
    const after = await job(fast.id);
    // The queued ones at once; the one still running is asked to stop.
    expect(after.status).toBe('running');
    expect(after.tasks).toMatchObject({ failed: 1, cancelled: 4, leased: 1 });
    expect((await job(second!.jobId)).cancelRequestedAt).not.toBeNull();
    await agent.api.post(`/v1/agent/jobs/${second!.jobId}/finish`, { epoch: second!.epoch, reason: 'cancelled', exitCode: 137 });
    expect(await job(fast.id)).toMatchObject({ status: 'failed', tasks: { failed: 1, cancelled: 5 } });
  });

  it('cancels every unfinished task with the array, and the array ends cancelled when they have', async () => {
    const agent = await node({ cpu: 64, memoryMb: 1_000_000 });
    const array = await submitArray({ count: 5, maxParallel: 2 });
    await pass();
    const cancelled = await client.api.post<Job>(`/v1/jobs/${array.id}/cancel`);
    expect(cancelled.status).toBe('running');
    expect(cancelled.tasks).toMatchObject({ cancelled: 3, leased: 2 });
    const work = await agent.api.get<Work>('/v1/agent/work?wait=0');
    for (const l of work.leases) await agent.api.post(`/v1/agent/jobs/${l.jobId}/finish`, { epoch: l.epoch, reason: 'cancelled', exitCode: 137 });
    expect(await job(array.id)).toMatchObject({ status: 'cancelled', tasks: { cancelled: 5 } });
    await expect(client.api.post(`/v1/jobs/${array.id}/cancel`)).rejects.toMatchObject({ status: 409 });

    // All still queued: cancelled at once.
    const queued = await client.api.post<Job>('/v1/jobs', jobSpec({ tasks: { count: 4 } }, { cpu: 1000 }));
    expect(await client.api.post<Job>(`/v1/jobs/${queued.id}/cancel`)).toMatchObject({ status: 'cancelled', tasks: { cancelled: 4 } });
  });

  it("serves the array's outputs as one tar, each task's under task-<index>/", async () => {
    const agent = await node({ cpu: 64, memoryMb: 1_000_000 });
    const array = await submitArray({ count: 3 });
    await pass();
    const work = await agent.api.get<Work>('/v1/agent/work?wait=0');
    for (const l of work.leases) {
      const index = (await job(l.jobId)).taskIndex!;
      if (index === 1) continue; // a task that left nothing
      const pack = tarStream.pack();
      pack.entry({ name: 'result.txt' }, `task ${index}\n`);
      pack.entry({ name: 'sub', type: 'directory' });
      pack.entry({ name: 'sub/more.txt' }, 'x'.repeat(700 * (index + 1)));
      pack.finalize();
      const body = await collect(pack as AsyncIterable<Buffer>);
      const res = await fetch(`${h.url}/v1/agent/jobs/${l.jobId}/outputs?epoch=${l.epoch}`, {
        method: 'POST',
        headers: { authorization: `Bearer ${await agent.token()}`, 'content-type': 'application/x-tar' },
        body: new Uint8Array(body),
      });
      expect(res.status, await res.clone().text()).toBe(201);
    }
    const res = await h.fetch(`/v1/jobs/${array.id}/outputs`, { key: client.key });
    expect(res.status).toBe(200);
    const extract = tarStream.extract();
    const seen: Record<string, string> = {};
    const read = (async () => {
      for await (const entry of extract) {
        const bytes = await collect(entry as AsyncIterable<Buffer>);
        seen[entry.header.name] = entry.header.type === 'directory' ? '/' : bytes.toString();
      }
    })();
    extract.end(Buffer.from(await res.arrayBuffer()));
    await read;
    expect(Object.keys(seen).sort()).toEqual(['task-0/result.txt', 'task-0/sub', 'task-0/sub/more.txt', 'task-2/result.txt', 'task-2/sub', 'task-2/sub/more.txt']);
    expect(seen['task-2/result.txt']).toBe('task 2\n');
    expect(seen['task-2/sub/more.txt']).toHaveLength(2100);
  });

  it('answers a retried submit with the same Idempotency-Key with the same array and makes no more tasks', async () => {
    const body = JSON.stringify(jobSpec({ tasks: { count: 20 } }));
    const submit = (b = body) => h.fetch('/v1/jobs', { method: 'POST', key: client.key, headers: { 'content-type': 'application/json', 'idempotency-key': 'sweep-1' }, body: b });
    const [a, b] = await Promise.all([submit(), submit()]);
    expect([a.status, b.status].sort()).toEqual([200, 201]);
    const [ja, jb] = [(await a.json()) as Job, (await b.json()) as Job];
    expect(ja.id).toBe(jb.id);
    const again = await submit();
    expect(again.status).toBe(200);
    expect(((await again.json()) as Job).id).toBe(ja.id);
    const [n] = await db().select({ n: sql<number>`count(*)::int` }).from(jobs).where(eq(jobs.parentId, ja.id));
    expect(n!.n).toBe(20);
    expect((await submit(JSON.stringify(jobSpec({ tasks: { count: 21 } })))).status).toBe(409);
  });

  it('sums usage and cost over the tasks', async () => {
    const agent = await node({ cpu: 64, memoryMb: 1_000_000, pricePerCpuHour: 3.6 });
    const array = await submitArray({ count: 3 });
    await pass();
    // Leased a while ago: each task costs what its second of lease did.
    await db().update(jobs).set({ leasedAt: sql`now() - interval '10 seconds'` }).where(eq(jobs.parentId, array.id));
    await finishAll(agent);
    const tasks = (await client.api.get<Page>(`/v1/jobs/${array.id}/tasks`)).items;
    const done = await job(array.id);
    expect(tasks.every((t) => t.cost > 0)).toBe(true);
    expect(done.cost).toBeCloseTo(tasks.reduce((s, t) => s + t.cost, 0), 6);
    expect(done.usage!.cpuCoreSeconds).toBeCloseTo(tasks.reduce((s, t) => s + t.usage!.cpuCoreSeconds, 0), 2);
  });

  it('never runs more than maxParallel tasks of an array, under concurrent passes, ends and expiries', async () => {
    const nodesUp = await Promise.all([0, 1, 2].map(() => node({ cpu: 8, memoryMb: 64_000 })));
    const maxParallel = 4;
    const array = await submitArray({ count: 30, maxParallel });
    const deps = h.coordinator.deps;
    const sweeper = new LeaseSweeper({ database: deps.database, clock: systemClock, log: silentLogger, leaseTtlSeconds: 0, onFreed: () => {} });
    // Two schedulers at once (PostgreSQL runs them truly side by side; PGlite one query at a time).
    const passOf = () =>
      schedulePass({ database: deps.database, clock: systemClock, log: silentLogger, leaseTtlSeconds: 60, batchSize: 7, full: Math.random() < 0.5 });
    let seed = 7;
    const rand = () => ((seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31);
    for (let round = 0; round < 40 && (await job(array.id)).status !== 'succeeded'; round++) {
      await Promise.all([passOf(), passOf()]);
      const n = await live(array.id);
      expect(n).toBeLessThanOrEqual(maxParallel);
      const [row] = await db().select({ active: jobs.tasksActive }).from(jobs).where(eq(jobs.id, array.id));
      expect(row!.active).toBe(n);
      for (const a of nodesUp) {
        const work = await a.api.get<Work>('/v1/agent/work?wait=0');
        for (const l of work.leases) {
          const r = rand();
          if (r < 0.5) await a.api.post(`/v1/agent/jobs/${l.jobId}/finish`, { epoch: l.epoch, reason: 'succeeded', exitCode: 0 });
          else if (r < 0.65) await a.api.post(`/v1/agent/jobs/${l.jobId}/finish`, { epoch: l.epoch, reason: 'refused', error: 'test' });
          else if (r < 0.8) await db().update(jobs).set({ leaseExpiresAt: new Date(0) }).where(eq(jobs.id, l.jobId));
        }
      }
      await sweeper.sweep();
    }
    const end = await job(array.id);
    expect(['succeeded', 'failed']).toContain(end.status);
    expect(end.tasks!.queued + end.tasks!.leased + end.tasks!.running).toBe(0);
    expect((await db().select({ active: jobs.tasksActive }).from(jobs).where(eq(jobs.id, array.id)))[0]!.active).toBe(0);
  }, 60_000);

  it('refuses in the database a lease past maxParallel (the CHECK behind the guard)', async () => {
    const array = await submitArray({ count: 3, maxParallel: 1 });
    await expect(db().update(jobs).set({ tasksActive: 2 }).where(eq(jobs.id, array.id))).rejects.toMatchObject({ cause: { code: '23514' } });
  });
});
