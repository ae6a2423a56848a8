import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { eq } from 'drizzle-orm';
import type { MeteredUsage, Usage } from '../../shared/pool.ts';
import { toMicros } from '../../shared/money.ts';
import { jobs } from '../../coordinator/db/schema/index.ts';
import { dbSkipReason, startHarness, type Harness } from '../support/harness.ts';
import { gpusOf, h100, seedNode } from '../support/pool-seed.ts';

const job = (name: string) => ({ name, image: 'busybox:latest', command: ['true'], resources: { cpu: 2, memoryMb: 1024, gpus: 1, gpu: { model: 'NVIDIA B200' } } });
const metered = (seconds: number, gpus: number): MeteredUsage => ({
  seconds,
  gpuSeconds: gpus ? { [h100]: seconds * gpus } : {},
  cpuCoreSeconds: seconds * 2,
  memoryMbSeconds: seconds * 1024,
});

describe.skipIf(dbSkipReason)('usage and cost', () => {
  let h: Harness;
  let alice: Awaited<ReturnType<Harness['newAccount']>>;
  let bob: Awaited<ReturnType<Harness['newAccount']>>;
  let paul: Awaited<ReturnType<Harness['newAccount']>>;
  let quinn: Awaited<ReturnType<Harness['newAccount']>>;
  const ids: Record<string, string> = {};

  // What the scheduler records when a job ends: its state, the node it ran on, usage and cost.
  async function finished(owner: typeof alice, name: string, nodeId: string, at: string, cost: number, usage: MeteredUsage | null) {
    const { id } = await owner.api.post<{ id: string }>('/v1/jobs', job(name));
    await h.coordinator.deps.database.db
      .update(jobs)
      .set({ status: 'succeeded', nodeId, startedAt: new Date(Date.parse(at) - 60_000), finishedAt: new Date(at), costMicros: toMicros(cost), usage })
      .where(eq(jobs.id, id));
    ids[name] = id;
  }

  beforeAll(async () => {
    h = await startHarness();
    alice = await h.newAccount('client');
    bob = await h.newAccount('client');
    paul = await h.newAccount('provider');
    quinn = await h.newAccount('both');
    const db = h.coordinator.deps.database.db;
    const p1 = (await seedNode(db, paul.accountId, { gpus: gpusOf(h100, 81_559, 2) })).nodeId;
    const q1 = (await seedNode(db, quinn.accountId, { gpus: gpusOf(h100, 81_559, 2) })).nodeId;
    ids.p1 = p1;
    ids.q1 = q1;
    await finished(alice, 'a-first', p1, '2025-03-01T10:00:00Z', 1.5, metered(1800, 1));
    await finished(alice, 'a-second', p1, '2025-03-01T23:59:59Z', 0.25, metered(300, 1));
    await finished(alice, 'a-third', q1, '2025-03-02T00:00:00Z', 2, metered(3600, 1));
    await finished(alice, 'a-before', p1, '2025-02-27T12:00:00Z', 9, metered(60, 1));
    await finished(bob, 'b-first', p1, '2025-03-02T08:00:00Z', 5, null);
    await finished(quinn, 'q-own', p1, '2025-03-03T08:00:00Z', 0.5, metered(60, 0));
    // Still queued, no cost: not in any report.
    await alice.api.post('/v1/jobs', job('a-queued'));
  });
  afterAll(async () => h?.close());

  const range = 'since=2025-03-01&until=2025-03-03';

  it("shows a client its spend by day and by job, newest first", async () => {
    const u = await alice.api.get<Usage>(`/v1/usage?${range}`);
    expect(u).toMatchObject({ since: '2025-03-01', until: '2025-03-03', earnings: null });
    expect(u.spend!.total).toBe(3.75);
    expect(u.spend!.jobs).toBe(3);
    expect(u.spend!.byDay).toEqual([
      { day: '2025-03-01', jobs: 2, amount: 1.75, gpuSeconds: 2100, cpuCoreSeconds: 4200 },
      { day: '2025-03-02', jobs: 1, amount: 2, gpuSeconds: 3600, cpuCoreSeconds: 7200 },
    ]);
    expect(u.spend!.byJob.map((j) => [j.name, j.amount, j.nodeId])).toEqual([
      ['a-third', 2, ids.q1],
      ['a-second', 0.25, ids.p1],
      ['a-first', 1.5, ids.p1],
    ]);
    expect(u.spend!.byJob[0]!.usage).toEqual(metered(3600, 1));
  });

  it("shows a provider its earnings from every client's jobs on its nodes, without their names", async () => {
    const u = await paul.api.get<Usage>(`/v1/usage?${range}`);
    expect(u.spend).toBeNull();
    expect(u.earnings!.total).toBe(1.5 + 0.25 + 5 + 0.5);
    expect(u.earnings!.byDay.map((d) => [d.day, d.jobs, d.amount])).toEqual([
      ['2025-03-01', 2, 1.75],
      ['2025-03-02', 1, 5],
      ['2025-03-03', 1, 0.5],
    ]);
    expect(u.earnings!.byJob.map((j) => j.jobId)).toEqual([ids['q-own'], ids['b-first'], ids['a-second'], ids['a-first']]);
    expect(u.earnings!.byJob.every((j) => j.name === null)).toBe(true);
    // A job without metered usage still shows its cost.
    expect(u.earnings!.byJob[1]).toMatchObject({ amount: 5, usage: null });
  });

  it('gives an account with both scopes both sides, and role picks one', async () => {
    const both = await quinn.api.get<Usage>(`/v1/usage?${range}`);
    expect(both.spend!.total).toBe(0.5);
    expect(both.earnings!.total).toBe(2);
    const onlyEarnings = await quinn.api.get<Usage>(`/v1/usage?${range}&role=provider`);
    expect(onlyEarnings.spend).toBeNull();
    expect(onlyEarnings.earnings!.total).toBe(2);
  });

  it("keeps tenants apart and refuses a side the key may not see", async () => {
    const b = await bob.api.get<Usage>(`/v1/usage?${range}`);
    expect(b.spend!.byJob.map((j) => j.name)).toEqual(['b-first']);
    expect(JSON.stringify(b)).not.toContain('a-first');
    expect((await h.fetch(`/v1/usage?${range}&role=provider`, { key: bob.key })).status).toBe(403);
    expect((await h.fetch('/v1/usage')).status).toBe(401);
  });

  it('defaults to the last 30 days and rejects a bad window', async () => {
    const u = await alice.api.get<Usage>('/v1/usage');
    expect(Date.parse(u.until) - Date.parse(u.since)).toBe(29 * 86_400_000);
    expect(u.spend!.jobs).toBe(0);
    for (const q of ['since=2025-03-05&until=2025-03-01', 'since=2020-01-01&until=2025-01-01', 'since=March', 'limit=0']) {
      const res = await h.fetch(`/v1/usage?${q}`, { key: alice.key });
      expect(res.status, q).toBe(400);
      expect(res.headers.get('content-type')).toMatch(/problem\+json/);
    }
  });
});
