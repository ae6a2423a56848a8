import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { sql } from 'drizzle-orm';
import { ApiRequestError } from '../../shared/client.ts';
import { dbSkipReason, startHarness, type Harness } from '../support/harness.ts';

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

  it('answers health and readiness', async () => {
    expect((await h.fetch('/healthz')).status).toBe(200);
    const ready = await h.fetch('/readyz');
    expect(ready.status).toBe(200);
    const rows = await h.testDb.database.rows<{ n: unknown }>(sql`select count(*) as n from drizzle.__drizzle_migrations`);
    expect(Number(rows[0]!.n)).toBeGreaterThan(0);
  });
});
