import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { eq, sql } from 'drizzle-orm';
import { jobs, nodes } from '../../coordinator/db/schema/index.ts';
import { ApiRequestError } from '../../shared/client.ts';
import type { Job } from '../../shared/jobs.ts';
import type { Work } from '../../shared/leases.ts';
import { countRows, snapshot } from '../support/db-snapshot.ts';
import { dbSkipReason, startHarness, type Harness } from '../support/harness.ts';
import { insertNode, insertProvider, jobSpec } from '../support/factories.ts';
import { expectProblem } from '../support/problem.ts';

type Page = { items: { id: string; status: string }[]; nextCursor: string | null };

const hello = { name: 'hello', image: 'busybox:latest', command: ['echo', 'hi'], resources: { cpu: 1, memoryMb: 128, gpus: 0 } };
const train = {
  name: 'train',
  image: 'pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime',
  command: ['python', 'train.py'],
  env: { EPOCHS: '3' },
  resources: { cpu: 8, memoryMb: 65536, gpus: 2, gpu: { model: 'H100', minMemoryMb: 80000 } },
  maxPricePerHour: 6.5,
  timeoutSeconds: 7200,
  maxAttempts: 3,
};

describe.skipIf(dbSkipReason)('jobs API', () => {
  let h: Harness;
  beforeAll(async () => {
    h = await startHarness();
  });
  afterAll(async () => h?.close());

  it('accepts both reference bodies as they are and reads the job back', async () => {
    const { api } = await h.newAccount('client');
    for (const body of [hello, train]) {
      const job = await api.post<{ id: string; status: string; spec: typeof body; attempts: number; nodeId: null }>('/v1/jobs', body);
      expect(job.status).toBe('queued');
      expect(job.id).toMatch(/^job_/);
      expect(job.spec).toMatchObject(body);
      expect(job.attempts).toBe(0);
      expect(job.nodeId).toBeNull();
      // The scheduler may have said meanwhile why it waits (no node here).
      const read = await api.get<typeof job & { pendingReason: string | null }>(`/v1/jobs/${job.id}`);
      expect({ ...read, pendingReason: null }).toEqual(job);
    }
  });

  it('lists, cancels and shows events', async () => {
    const { api } = await h.newAccount('client');
    const a = await api.post<{ id: string }>('/v1/jobs', hello);
    const b = await api.post<{ id: string }>('/v1/jobs', { ...hello, name: 'second' });
    const page1 = await api.get<{ items: { id: string }[]; nextCursor: string }>('/v1/jobs?limit=1');
    expect(page1.items.map((j) => j.id)).toEqual([b.id]);
    const page2 = await api.get<{ items: { id: string }[]; nextCursor: string | null }>(`/v1/jobs?limit=1&cursor=${page1.nextCursor}`);
    expect(page2.items.map((j) => j.id)).toEqual([a.id]);
    const cancelled = await api.post<{ status: string }>(`/v1/jobs/${a.id}/cancel`);
    expect(cancelled.status).toBe('cancelled');
    const queued = await api.get<{ items: { id: string }[] }>('/v1/jobs?status=queued');
    expect(queued.items.map((j) => j.id)).toEqual([b.id]);
    const events = await api.get<{ items: { from: string | null; to: string; reason: string }[] }>(`/v1/jobs/${a.id}/events`);
    expect(events.items.map((e) => [e.from, e.to])).toEqual([
      [null, 'queued'],
      ['queued', 'cancelled'],
    ]);
    await expect(api.post(`/v1/jobs/${a.id}/cancel`)).rejects.toMatchObject({ status: 409 });
  });

  it('returns the same job for a retried submit with the same Idempotency-Key', async () => {
    const { key } = await h.newAccount('client');
    const submit = (body: unknown) =>
      h.fetch('/v1/jobs', {
        method: 'POST',
        key,
        headers: { 'content-type': 'application/json', 'idempotency-key': 'retry-1' },
        body: JSON.stringify(body),
      });
    const first = await submit(hello);
    const second = await submit(hello);
    expect(first.status).toBe(201);
    expect(second.status).toBe(200);
    expect((await second.json()).id).toBe((await first.json()).id);
    const changed = await submit({ ...hello, name: 'other' });
    expect(changed.status).toBe(409);
  });

  it("hides another tenant's job as not found", async () => {
    const alice = await h.newAccount('client');
    const bob = await h.newAccount('client');
    const job = await alice.api.post<{ id: string }>('/v1/jobs', hello);
    for (const call of [() => bob.api.get(`/v1/jobs/${job.id}`), () => bob.api.post(`/v1/jobs/${job.id}/cancel`), () => bob.api.get(`/v1/jobs/${job.id}/events`)]) {
      const err = await call().catch((e: ApiRequestError) => e);
      expect(err).toBeInstanceOf(ApiRequestError);
      expect((err as ApiRequestError).status).toBe(404);
    }
    const still = await alice.api.get<{ status: string }>(`/v1/jobs/${job.id}`);
    expect(still.status).toBe('queued');
  });

  it('keeps the requested resources as columns the scheduler can filter on', async () => {
    const { api } = await h.newAccount('client');
    const a = await api.post<{ id: string }>('/v1/jobs', hello);
    const b = await api.post<{ id: string }>('/v1/jobs', train, { headers: { 'idempotency-key': 'train-1' } });
    const rows = await h.testDb.database.rows<Record<string, unknown>>(sql`
      select id, status, cpu_millis, memory_mb, gpu_count, gpu_model, gpu_min_memory_mb, max_price_micros,
             max_attempts, region, idempotency_key, spec_digest, created_at = updated_at as same_times
      from jobs where id in (${a.id}, ${b.id}) order by name`);
    expect(rows.map((r) => ({ ...r, max_price_micros: r.max_price_micros === null ? null : Number(r.max_price_micros) }))).toEqual([
      {
        id: a.id, status: 'queued', cpu_millis: 1000, memory_mb: 128, gpu_count: 0, gpu_model: null, gpu_min_memory_mb: null,
        max_price_micros: null, max_attempts: 3, region: null, idempotency_key: null, spec_digest: expect.stringMatching(/^sha256:/), same_times: true,
      },
      {
        id: b.id, status: 'queued', cpu_millis: 8000, memory_mb: 65536, gpu_count: 2, gpu_model: 'H100', gpu_min_memory_mb: 80000,
        max_price_micros: 6_500_000, max_attempts: 3, region: null, idempotency_key: 'train-1', spec_digest: expect.stringMatching(/^sha256:/), same_times: true,
      },
    ]);
  });

  it('makes concurrent submits with one Idempotency-Key into one job and one event', async () => {
    const { key } = await h.newAccount('client');
    const results = await Promise.all(
      Array.from({ length: 8 }, () =>
        h.fetch('/v1/jobs', {
          method: 'POST',
          key,
          headers: { 'content-type': 'application/json', 'idempotency-key': 'burst' },
          body: JSON.stringify(hello),
        }),
      ),
    );
    const statuses = results.map((r) => r.status).sort();
    expect(statuses).toEqual([200, 200, 200, 200, 200, 200, 200, 201]);
    const ids = new Set(await Promise.all(results.map(async (r) => ((await r.json()) as { id: string }).id)));
    expect(ids.size).toBe(1);
    const [id] = [...ids];
    expect(await countRows(h.testDb.database, 'jobs', { column: 'idempotency_key', value: 'burst' })).toBe(1);
    expect(await countRows(h.testDb.database, 'job_events', { column: 'job_id', value: id! })).toBe(1);
  });

  it('keeps Idempotency-Keys apart per account, and makes a new job for each submit without one', async () => {
    const alice = await h.newAccount('client');
    const bob = await h.newAccount('client');
    const headers = { 'idempotency-key': 'same-key' };
    const a = await alice.api.post<{ id: string }>('/v1/jobs', hello, { headers });
    const b = await bob.api.post<{ id: string }>('/v1/jobs', hello, { headers });
    expect(a.id).not.toBe(b.id);
    const c = await alice.api.post<{ id: string }>('/v1/jobs', hello);
    const d = await alice.api.post<{ id: string }>('/v1/jobs', hello);
    expect(new Set([a.id, c.id, d.id]).size).toBe(3);
  });

  it('refuses an Idempotency-Key reused for another spec with 409, changing nothing', async () => {
    const { api, key } = await h.newAccount('client');
    const first = await api.post<{ id: string }>('/v1/jobs', hello, { headers: { 'idempotency-key': 'k1' } });
    const before = await snapshot(h.testDb.database);
    const res = await h.fetch('/v1/jobs', {
      method: 'POST',
      key,
      headers: { 'content-type': 'application/json', 'idempotency-key': 'k1' },
      body: JSON.stringify({ ...hello, command: ['echo', 'other'] }),
    });
    await expectProblem(res, { status: 409, code: 'conflict', title: 'Conflict', detail: 'Idempotency-Key' });
    expect(await snapshot(h.testDb.database)).toEqual(before);
    expect((await api.get<{ status: string }>(`/v1/jobs/${first.id}`)).status).toBe('queued');
  });

  it('pages through jobs newest first, ending with a null cursor', async () => {
    const { api } = await h.newAccount('client');
    const empty = await api.get<Page>('/v1/jobs');
    expect(empty).toEqual({ items: [], nextCursor: null });
    const ids: string[] = [];
    for (let i = 0; i < 5; i++) ids.push((await api.post<{ id: string }>('/v1/jobs', { ...hello, name: `j${i}` })).id);
    const newestFirst = [...ids].sort().reverse();
    const seen: string[][] = [];
    let cursor: string | null = null;
    do {
      const page: Page = await api.get<Page>(`/v1/jobs?limit=2${cursor ? `&cursor=${cursor}` : ''}`);
      seen.push(page.items.map((j) => j.id));
      cursor = page.nextCursor;
    } while (cursor && seen.length < 10);
    expect(seen).toEqual([newestFirst.slice(0, 2), newestFirst.slice(2, 4), newestFirst.slice(4)]);
    // A page that ends exactly at the last job says there is no next one.
    const exact = await api.get<Page>(`/v1/jobs?limit=5`);
    expect(exact.items.map((j) => j.id)).toEqual(newestFirst);
    expect(exact.nextCursor).toBeNull();
    const widest = await api.get<Page>('/v1/jobs?limit=200');
    expect(widest.items).toHaveLength(5);
  });

  it('gives 50 jobs a page by default', async () => {
    const { api } = await h.newAccount('client');
    for (let i = 0; i < 51; i++) await api.post('/v1/jobs', { ...hello, name: `n${i}` });
    const first = await api.get<Page>('/v1/jobs');
    expect(first.items).toHaveLength(50);
    expect(first.nextCursor).toBe(first.items[49]!.id);
    const second = await api.get<Page>(`/v1/jobs?cursor=${first.nextCursor}`);
    expect(second.items).toHaveLength(1);
    expect(second.nextCursor).toBeNull();
  });

  it('filters by status across pages, and never shows another tenant’s jobs', async () => {
    const alice = await h.newAccount('client');
    const bob = await h.newAccount('client');
    const mine: string[] = [];
    for (let i = 0; i < 4; i++) mine.push((await alice.api.post<{ id: string }>('/v1/jobs', { ...hello, name: `a${i}` })).id);
    const theirs = await bob.api.post<{ id: string }>('/v1/jobs', hello);
    await alice.api.post(`/v1/jobs/${mine[1]}/cancel`);
    await alice.api.post(`/v1/jobs/${mine[2]}/cancel`);
    const queued1 = await alice.api.get<Page>('/v1/jobs?status=queued&limit=1');
    const queued2 = await alice.api.get<Page>(`/v1/jobs?status=queued&limit=1&cursor=${queued1.nextCursor}`);
    expect([...queued1.items, ...queued2.items].map((j) => j.id)).toEqual([mine[3], mine[0]]);
    expect(queued2.nextCursor).toBeNull();
    const cancelled = await alice.api.get<Page>('/v1/jobs?status=cancelled');
    expect(cancelled.items.map((j) => [j.id, j.status])).toEqual([
      [mine[2], 'cancelled'],
      [mine[1], 'cancelled'],
    ]);
    const all = await alice.api.get<Page>('/v1/jobs?limit=200');
    expect(all.items.map((j) => j.id)).not.toContain(theirs.id);
    // Another tenant's id as a cursor is only a position: it shows nothing of theirs.
    const after = await bob.api.get<Page>(`/v1/jobs?cursor=${mine[3]}`);
    expect(after.items.map((j) => j.id)).toEqual(theirs.id < mine[3]! ? [theirs.id] : []);
  });

  it('answers health and readiness', async () => {
    expect((await h.fetch('/healthz')).status).toBe(200);
    const ready = await h.fetch('/readyz');
    expect(ready.status).toBe(200);
    const rows = await h.testDb.database.rows<{ n: unknown }>(sql`select count(*) as n from drizzle.__drizzle_migrations`);
    expect(Number(rows[0]!.n)).toBeGreaterThan(0);
  });

  // Room for the jobs other tests here left queued, which the node takes too.
  it('shows what the client pays: the prices at lease, the cost so far and the usage, then what was charged', async () => {
    const db = h.coordinator.deps.database.db;
    const { api } = await h.newAccount('client');
    const node = await insertNode(
      db,
      { accountId: await insertProvider(db), cpu: 1024, memoryMb: 4_000_000, diskMb: 100_000_000, gpus: [{ model: 'NVIDIA L4' }], pricePerGpuHour: 3.6, pricePerCpuHour: 0.36 },
      { audience: h.coordinator.deps.config.name, baseUrl: h.url },
    );
    try {
      const queued = await api.post<Job>('/v1/jobs', jobSpec({}, { gpus: 1, cpu: 2, memoryMb: 2048 }));
      expect([queued.prices, queued.cost, queued.usage]).toEqual([null, 0, null]);
      let epoch: number | undefined;
      const deadline = Date.now() + 10_000;
      while (epoch === undefined && Date.now() < deadline) {
        const work = await node.api.get<Work>('/v1/agent/work?wait=5');
        epoch = work.leases.find((l) => l.jobId === queued.id)?.epoch;
      }
      expect(epoch, (await api.get<Job>(`/v1/jobs/${queued.id}`)).pendingReason ?? 'no reason').toBeDefined();
      // The provider's price changes after the lease: the job keeps paying what it was leased at.
      await db.update(nodes).set({ priceGpuHourMicros: 9_000_000 }).where(eq(nodes.id, node.nodeId));
      // Leased an hour ago: one GPU at 3.60 + 2 cores at 0.36 for an hour = 4.32 so far.
      await db.update(jobs).set({ leasedAt: new Date(Date.now() - 3600_000) }).where(eq(jobs.id, queued.id));
      const running = await api.get<Job>(`/v1/jobs/${queued.id}`);
      expect(running.prices).toEqual({ perGpuHour: 3.6, perCpuHour: 0.36 });
      expect(running.cost).toBeGreaterThanOrEqual(4.32);
      expect(running.cost).toBeLessThan(4.33);
      expect(running.usage!.seconds).toBeGreaterThanOrEqual(3600);
      expect(Object.keys(running.usage!.gpuSeconds)).toEqual(['NVIDIA L4']);
      expect(running.usage!.cpuCoreSeconds).toBeCloseTo(running.usage!.seconds * 2, 0);
      const listed = await api.get<{ items: Job[] }>('/v1/jobs?status=leased');
      expect(listed.items.find((j) => j.id === queued.id)!.cost).toBeGreaterThanOrEqual(4.32);

      await node.api.post(`/v1/agent/jobs/${queued.id}/finish`, { epoch, reason: 'succeeded', exitCode: 0 });
      const [row] = await db.select().from(jobs).where(eq(jobs.id, queued.id));
      const ended = await api.get<Job>(`/v1/jobs/${queued.id}`);
      expect(ended.status).toBe('succeeded');
      // An ended job shows what was charged, which no longer grows.
      expect(ended.cost).toBe(row!.costMicros! / 1e6);
      expect(ended.usage).toEqual(row!.usage);
      expect(ended.prices).toEqual({ perGpuHour: 3.6, perCpuHour: 0.36 });
    } finally {
      await db.update(nodes).set({ status: 'offline' }).where(eq(nodes.id, node.nodeId));
    }
  });
});
