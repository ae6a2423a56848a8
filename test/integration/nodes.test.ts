import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { and, eq, sql } from 'drizzle-orm';
import { SignJWT, type CryptoKey } from 'jose';
import { gpus, jobEvents, jobs, nodeMetrics, nodes } from '../../coordinator/db/schema/index.ts';
import type { HeartbeatHook } from '../../coordinator/deps.ts';
import { ingestHeartbeat } from '../../coordinator/nodes/registry.ts';
import { pruneNodeMetrics } from '../../coordinator/nodes/sweeper.ts';
import { ApiRequestError, type ApiClient } from '../../shared/client.ts';
import type { HardwareReport } from '../../shared/hardware.ts';
import type { EnrollmentToken, HeartbeatAnswer, Node, NodeMetricsSeries, RegisteredNode } from '../../shared/nodes.ts';
import { a5000Machine, metricsFor, newAgentKey, signAgentToken } from '../support/agent-identity.ts';
import { testPoolSize } from '../support/database.ts';
import { dbSkipReason, itOn, startHarness, type Harness } from '../support/harness.ts';
import { until } from '../support/until.ts';

let machines = 0;

interface Agent {
  nodeId: string;
  hardware: HardwareReport;
  privateKey: CryptoKey;
  provider: { accountId: string; api: ApiClient };
  token(claims?: { iatSeconds?: number; expSeconds?: number; sub?: string; aud?: string }): Promise<string>;
  heartbeat(body: Record<string, unknown>, token?: string): Promise<Response>;
}

async function enroll(h: Harness, provider?: { accountId: string; api: ApiClient }, gpuCount = 2, machine?: HardwareReport): Promise<Agent> {
  provider ??= await h.newAccount('provider');
  const { token } = await provider.api.post<EnrollmentToken>('/v1/enrollment-tokens', {});
  const { publicJwk, privateKey } = await newAgentKey();
  const hardware = machine ?? a5000Machine(`n${++machines}`, gpuCount);
  const reg = await h.client().post<RegisteredNode>('/v1/agent/register', { token, publicKey: publicJwk, hardware });
  const sign = (c: { iatSeconds?: number; expSeconds?: number; sub?: string; aud?: string } = {}) =>
    signAgentToken(privateKey, { sub: c.sub ?? reg.nodeId, aud: c.aud ?? reg.coordinatorName, ...c });
  const fixed = await sign();
  return {
    nodeId: reg.nodeId,
    hardware,
    privateKey,
    provider: provider!,
    token: (c) => (c ? sign(c) : Promise.resolve(fixed)),
    heartbeat: async (body, t) =>
      h.fetch('/v1/agent/heartbeat', {
        method: 'POST',
        headers: { 'content-type': 'application/json', authorization: `Bearer ${t ?? fixed}` },
        body: JSON.stringify(body),
      }),
  };
}

const refusal = async (p: Promise<unknown>) => {
  const err = await p.then(
    () => null,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(ApiRequestError);
  return err as ApiRequestError;
};


describe.skipIf(dbSkipReason)('nodes and heartbeats', () => {
  let h: Harness;
  beforeAll(async () => {
    h = await startHarness();
  });
  afterAll(async () => h?.close());
  const db = () => h.testDb.database.db;

  itOn('postgres')('answers heartbeats on connections of their own while other work holds every pooled one', async () => {
    const a = await enroll(h);
    // The node's key is read once, then kept: this heartbeat needs no pooled connection after it.
    expect((await a.heartbeat({ jobs: [], metrics: metricsFor(a.hardware, 1) })).status).toBe(200);
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    let holding = 0;
    const held = Array.from({ length: testPoolSize }, () =>
      h.coordinator.deps.database.db.transaction(async (tx) => {
        await tx.execute(sql`select 1`);
        holding++;
        await gate;
      }),
    );
    try {
      await until('every pooled connection held', () => holding === testPoolSize, 10_000);
      const answer = await Promise.race([
        a.heartbeat({ jobs: [], metrics: metricsFor(a.hardware, 2) }).then((r) => r.status),
        new Promise((r) => setTimeout(() => r('no answer in 5 s'), 5000).unref()),
      ]);
      expect(answer).toBe(200);
    } finally {
      release();
      await Promise.all(held);
    }
  });

  it('takes a heartbeat: liveness, latest metrics on the node and its GPUs, one sample per minute', async () => {
    const a = await enroll(h);
    const before = await a.provider.api.get<Node>(`/v1/nodes/${a.nodeId}`);
    for (let n = 0; n < 3; n++) {
      const res = await a.heartbeat({ jobs: [], metrics: metricsFor(a.hardware, n) });
      expect(res.status).toBe(200);
      const answer = (await res.json()) as HeartbeatAnswer;
      expect(answer).toMatchObject({ nodeId: a.nodeId, status: 'online', hardwareWanted: false, warnings: [] });
    }
    const node = await a.provider.api.get<Node>(`/v1/nodes/${a.nodeId}`);
    expect(Date.parse(node.lastHeartbeatAt!)).toBeGreaterThanOrEqual(Date.parse(before.lastHeartbeatAt!));
    expect(node.metrics).toMatchObject({ host: { loadAvg1: 0.5, memoryUsedMb: 12_000 } });
    expect(node.gpus.map((g) => g.metrics)).toEqual(
      a.hardware.gpus.map(() => ({ utilizationPct: 39, memoryUsedMb: 1026, temperatureC: 41, powerW: 62 })),
    );
    // Three heartbeats within a few milliseconds: one minute, so one stored sample (two if the
    // minute turned in between).
    const samples = await db().select().from(nodeMetrics).where(eq(nodeMetrics.nodeId, a.nodeId));
    expect(samples.length).toBeGreaterThanOrEqual(1);
    expect(samples.length).toBeLessThanOrEqual(2);
    for (const s of samples) expect(s.at.getUTCSeconds()).toBe(0);

    // A minute later the node gets its next sample (each node's minute starts at its own second,
    // so writes spread out), stored under its wall-clock minute and upserted once.
    const next = new Date(Math.ceil((Date.now() + 1) / 60_000) * 60_000 + 65_000);
    for (let i = 0; i < 3; i++) {
      await ingestHeartbeat(h.coordinator.deps, a.nodeId, { jobs: [], metrics: metricsFor(a.hardware, 10 + i) }, new Date(next.getTime() + i * 5_000));
    }
    const after = await db().select().from(nodeMetrics).where(eq(nodeMetrics.nodeId, a.nodeId));
    expect(after.length).toBe(samples.length + 1);
    const latest = after.sort((x, y) => x.at.getTime() - y.at.getTime()).at(-1)!;
    expect(latest.at.getTime()).toBe(Math.floor(next.getTime() / 60_000) * 60_000);
  });

  it('serves a time range of samples, and refuses a range it does not keep', async () => {
    const a = await enroll(h);
    const t0 = Math.floor(Date.now() / 60_000) * 60_000 - 10 * 60_000;
    for (let m = 0; m < 5; m++) {
      await ingestHeartbeat(h.coordinator.deps, a.nodeId, { jobs: [], metrics: metricsFor(a.hardware, m) }, new Date(t0 + m * 60_000 + 1_000));
    }
    const since = new Date(t0 + 60_000).toISOString();
    const until_ = new Date(t0 + 3 * 60_000).toISOString();
    const series = await a.provider.api.get<NodeMetricsSeries>(`/v1/nodes/${a.nodeId}/metrics?since=${since}&until=${until_}`);
    expect(series.items.map((i) => Date.parse(i.at) - t0)).toEqual([60_000, 120_000, 180_000]);
    expect(series.items.map((i) => i.sample.gpus[0]!.utilizationPct)).toEqual([38, 39, 40]);
    const lastHour = await a.provider.api.get<NodeMetricsSeries>(`/v1/nodes/${a.nodeId}/metrics`);
    expect(lastHour.items.length).toBeGreaterThanOrEqual(5);

    const tooLong = await refusal(a.provider.api.get(`/v1/nodes/${a.nodeId}/metrics?since=2020-01-01T00:00:00Z&until=2020-02-01T00:00:00Z`));
    expect(tooLong.status).toBe(400);
    const backwards = await refusal(a.provider.api.get(`/v1/nodes/${a.nodeId}/metrics?since=${until_}&until=${since}`));
    expect(backwards.status).toBe(400);
    expect((await refusal(a.provider.api.get(`/v1/nodes/${a.nodeId}/metrics?since=yesterday`))).status).toBe(400);
  });

  it('prunes samples older than seven days', async () => {
    const a = await enroll(h);
    const now = Date.now();
    await ingestHeartbeat(h.coordinator.deps, a.nodeId, { jobs: [], metrics: metricsFor(a.hardware) }, new Date(now - 8 * 86_400_000));
    await ingestHeartbeat(h.coordinator.deps, a.nodeId, { jobs: [], metrics: metricsFor(a.hardware) }, new Date(now - 6 * 86_400_000));
    expect(await pruneNodeMetrics(db(), new Date(now))).toBeGreaterThanOrEqual(1);
    const left = await db().select().from(nodeMetrics).where(eq(nodeMetrics.nodeId, a.nodeId));
    expect(left.map((r) => Math.round((now - r.at.getTime()) / 86_400_000))).toEqual([6]);
  });

  it('refuses forged, expired, long-lived, misaddressed and malformed agent tokens, and changes nothing', async () => {
    const a = await enroll(h);
    const b = await enroll(h);
    const beforeRow = (await db().select().from(nodes).where(eq(nodes.id, a.nodeId)))[0]!;
    const now = Math.floor(Date.now() / 1000);
    const other = await newAgentKey();
    const hs256 = await new SignJWT({})
      .setProtectedHeader({ alg: 'HS256' })
      .setSubject(a.nodeId)
      .setAudience(h.coordinator.deps.config.name)
      .setIssuedAt()
      .setExpirationTime('50s')
      .sign(new TextEncoder().encode('a shared secret the coordinator never had'));
    const unsigned = `${Buffer.from('{"alg":"none"}').toString('base64url')}.${Buffer.from(JSON.stringify({ sub: a.nodeId, aud: h.coordinator.deps.config.name, exp: now + 30, iat: now })).toString('base64url')}.`;
    const cases: [string, string, RegExp][] = [
      ['signed by another key', await signAgentToken(other.privateKey, { sub: a.nodeId, aud: h.coordinator.deps.config.name }), /not signed by this node's key/],
      ['expired', await a.token({ iatSeconds: now - 120, expSeconds: now - 60 }), /expired/],
      ['living an hour', await a.token({ iatSeconds: now, expSeconds: now + 3600 }), /at most 60 s/],
      ['for another coordinator', await a.token({ aud: 'https://elsewhere.example' }), /another coordinator/],
      ["naming another node (B's id, A's key)", await a.token({ sub: b.nodeId }), /not signed by this node's key/],
      ['naming no node', await a.token({ sub: 'node_nope' }), /does not name a node/],
      ['HS256', hs256, /EdDSA/],
      ['alg none', unsigned, /EdDSA|not a JWT/],
      ['garbage', 'not.a.jwt', /not a JWT|not valid/],
    ];
    for (const [what, token, why] of cases) {
      const res = await a.heartbeat({ jobs: [], metrics: metricsFor(a.hardware, 50) }, token);
      expect(res.status, what).toBe(401);
      expect(res.headers.get('content-type'), what).toMatch(/application\/problem\+json/);
      expect((await res.json()).detail, what).toMatch(why);
    }
    const none = await h.fetch('/v1/agent/heartbeat', { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{}' });
    expect(none.status).toBe(401);
    // A provider's API key is not an agent token.
    const withKey = await h.fetch('/v1/agent/heartbeat', {
      method: 'POST',
      key: (await h.newAccount('provider')).key,
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ jobs: [], metrics: metricsFor(a.hardware) }),
    });
    expect(withKey.status).toBe(401);
    const afterRow = (await db().select().from(nodes).where(eq(nodes.id, a.nodeId)))[0]!;
    expect(afterRow.lastHeartbeatAt).toEqual(beforeRow.lastHeartbeatAt);
    expect(afterRow.metrics).toEqual(beforeRow.metrics);
  });

  it('refuses bad heartbeats with problem+json and stores nothing', async () => {
    const a = await enroll(h);
    const good = metricsFor(a.hardware);
    const beforeRow = (await db().select().from(nodes).where(eq(nodes.id, a.nodeId)))[0]!;
    const bad: unknown[] = [
      { jobs: [], metrics: { ...good, gpus: [{ ...good.gpus[0]!, memoryUsedMb: -5 }] } },
      { jobs: [], metrics: { ...good, gpus: [{ ...good.gpus[0]!, utilizationPct: '37 %' }] } },
      { jobs: [], metrics: { ...good, gpus: Array.from({ length: 10_000 }, (_, i) => ({ ...good.gpus[0]!, id: `GPU-${i}` })) } },
      { jobs: [{ jobId: 'job_x', epoch: -1 }], metrics: good },
      { jobs: [], metrics: good, hardware: { ...a.hardware, gpus: [{ ...a.hardware.gpus[0]!, memoryMb: -1 }] } },
      { jobs: [], metrics: good, hardware: { ...a.hardware, host: { ...a.hardware.host, cpuCores: 'many' } } },
      { jobs: [], metrics: good, surprise: 1 },
      { jobs: [] },
    ];
    for (const body of bad) {
      const res = await a.heartbeat(body as Record<string, unknown>);
      expect([400, 413]).toContain(res.status);
      expect(res.headers.get('content-type')).toMatch(/application\/problem\+json/);
    }
    const afterRow = (await db().select().from(nodes).where(eq(nodes.id, a.nodeId)))[0]!;
    expect(afterRow.lastHeartbeatAt).toEqual(beforeRow.lastHeartbeatAt);
    const gpuRows = await db().select().from(gpus).where(eq(gpus.nodeId, a.nodeId));
    expect(gpuRows.map((g) => g.memoryMb)).toEqual([24_564, 24_564]);
  });

  it("re-reported hardware moves the node's capacity and GPUs, and re-queues a job on a vanished GPU", async () => {
    const a = await enroll(h);
    const client = await h.newAccount('client');
    const job = await client.api.post<{ id: string }>('/v1/jobs', {
      name: 'on-gpu-1',
      image: 'busybox:latest',
      command: ['true'],
      // A label no node has: the scheduler never places it (the test does, below, without racing it).
      resources: { cpu: 2, memoryMb: 40_000, gpus: 1 },
      constraints: { nodeId: a.nodeId, nodeLabels: { placed: 'by-the-test' } },
    });
    const held = a.hardware.gpus[1]!;
    // Placed on GPU 1 as the scheduler would: job leased at epoch 1, allocation taken, GPU marked.
    await db().transaction(async (tx) => {
      await tx.update(jobs).set({ status: 'leased', nodeId: a.nodeId, gpuIds: [held.id], leaseEpoch: 1, attempts: 1 }).where(eq(jobs.id, job.id));
      await tx.update(nodes).set({ allocatedCpuMillis: 2000, allocatedMemoryMb: 40_000, allocatedDiskMb: 10_240 }).where(eq(nodes.id, a.nodeId));
      await tx.update(gpus).set({ jobId: job.id }).where(and(eq(gpus.nodeId, a.nodeId), eq(gpus.id, held.id)));
    });

    // GPU 1 is gone, a new one appeared, the driver was updated, and the host lost memory.
    const newGpu = { ...a5000Machine(`x${machines}`, 1).gpus[0]!, index: 1 };
    const changed: HardwareReport = {
      ...a.hardware,
      host: { ...a.hardware.host, memoryMb: 32_000, cpuCores: 8 },
      gpus: [{ ...a.hardware.gpus[0]!, driverVersion: '595.10' }, newGpu],
    };
    const res = await a.heartbeat({ jobs: [{ jobId: job.id, epoch: 1 }], metrics: metricsFor(changed), hardware: changed });
    expect(res.status).toBe(200);
    const node = await a.provider.api.get<Node>(`/v1/nodes/${a.nodeId}`);
    expect(node.capacity).toMatchObject({ cpu: 8, memoryMb: 32_000 });
    expect(node.allocated).toEqual({ cpu: 0, memoryMb: 0, diskMb: 0 });
    expect(node.gpus.map((g) => [g.id, g.driverVersion, g.jobId])).toEqual([
      [a.hardware.gpus[0]!.id, '595.10', null],
      [newGpu.id, newGpu.driverVersion, null],
    ]);
    const after = await client.api.get<{ status: string; leaseEpoch: number; nodeId: string | null; gpuIds: string[] | null }>(`/v1/jobs/${job.id}`);
    expect(after).toMatchObject({ status: 'queued', leaseEpoch: 2, nodeId: null, gpuIds: null });
    const events = await db().select().from(jobEvents).where(eq(jobEvents.jobId, job.id));
    expect(events.at(-1)).toMatchObject({ fromStatus: 'leased', toStatus: 'queued' });
    expect(events.at(-1)!.reason).toMatch(/vanished/);
  });

  it('asks for the hardware again when the metrics name GPUs it does not know', async () => {
    const a = await enroll(h);
    const other = a5000Machine(`y${machines}`, 3);
    const res = await a.heartbeat({ jobs: [], metrics: metricsFor(other) });
    expect(((await res.json()) as HeartbeatAnswer).hardwareWanted).toBe(true);
  });

  it('leaves out of a re-report a GPU another node holds, says so, and keeps the heartbeat', async () => {
    const a = await enroll(h);
    const b = await enroll(h);
    const stolen: HardwareReport = { ...b.hardware, gpus: [...b.hardware.gpus, { ...a.hardware.gpus[0]!, index: 2 }] };
    const res = await b.heartbeat({ jobs: [], metrics: metricsFor(b.hardware), hardware: stolen });
    expect(res.status).toBe(200);
    const answer = (await res.json()) as HeartbeatAnswer;
    expect(answer.warnings).toEqual([`GPU ${a.hardware.gpus[0]!.uuid} is already registered by another node`]);
    const node = await b.provider.api.get<Node>(`/v1/nodes/${b.nodeId}`);
    expect(node.gpus.map((g) => g.uuid)).toEqual(b.hardware.gpus.map((g) => g.uuid));
  });

  it('GPUs that share one UUID are known by (UUID, bus id): another node may hold that UUID at other bus ids, not at theirs', async () => {
    // What the agent reports for two GPUs with one UUID (cloned VMs): <uuid>/<bus id>, the bus ids apart.
    const twins = (buses: [string, string]): HardwareReport => {
      const m = a5000Machine('twins', 2);
      const uuid = m.gpus[0]!.uuid;
      return { ...m, gpus: m.gpus.map((g, i) => ({ ...g, uuid, id: `${uuid}/${buses[i]}`, pciBusId: buses[i]! })) };
    };
    const a = await enroll(h, undefined, 2, twins(['00000000:81:00.0', '00000000:C1:00.0']));
    const uuid = a.hardware.gpus[0]!.uuid;
    const b = await enroll(h, undefined, 2, twins(['00000000:3B:00.0', '00000000:86:00.0']));
    const nodeB = await b.provider.api.get<Node>(`/v1/nodes/${b.nodeId}`);
    expect(nodeB.gpus.map((g) => [g.uuid, g.pciBusId])).toEqual([
      [uuid, '00000000:3B:00.0'],
      [uuid, '00000000:86:00.0'],
    ]);
    // The same UUID at a bus id node A holds: one physical GPU, refused.
    const err = await refusal(enroll(h, undefined, 2, twins(['00000000:C1:00.0', '00000000:E1:00.0'])));
    expect(err.status).toBe(409);
    expect(err.problem?.detail).toBe(`GPU ${uuid} at 00000000:C1:00.0 is already registered by another node`);
  });

  it('merges what the heartbeat hook answers, calling it inside the heartbeat transaction', async () => {
    const a = await enroll(h);
    const seen: unknown[] = [];
    const hook: HeartbeatHook = {
      async onHeartbeat(tx, nodeId, report, at) {
        // The heartbeat's own write is visible: same transaction.
        const [row] = await tx.select({ at: nodes.lastHeartbeatAt }).from(nodes).where(eq(nodes.id, nodeId));
        seen.push({ nodeId, report, sameTx: row!.at!.getTime() === at.getTime() });
        return { leases: [], cancel: [{ jobId: 'job_0000000000000000000000', epoch: 3 }] };
      },
    };
    const original = h.coordinator.deps.heartbeatHook;
    h.coordinator.deps.heartbeatHook = hook;
    try {
      const jobsHeld = [{ jobId: 'job_00000000000000000000aa', epoch: 2 }];
      const res = await a.heartbeat({ jobs: jobsHeld, metrics: metricsFor(a.hardware) });
      const answer = await res.json();
      expect(answer).toMatchObject({ nodeId: a.nodeId, status: 'online', leases: [], cancel: [{ jobId: 'job_0000000000000000000000', epoch: 3 }] });
      expect(seen).toEqual([{ nodeId: a.nodeId, report: { jobs: jobsHeld, draining: false }, sameTx: true }]);
    } finally {
      h.coordinator.deps.heartbeatHook = original;
    }
  });

  it("lists only the provider's own nodes; another provider's node is not found", async () => {
    const alice = await h.newAccount('provider');
    const a1 = await enroll(h, alice);
    const a2 = await enroll(h, alice);
    const bob = await h.newAccount('provider');
    const b1 = await enroll(h, bob);
    const list = await alice.api.get<{ items: Node[]; nextCursor: string | null }>('/v1/nodes');
    expect(list.items.map((n) => n.id)).toEqual([a1.nodeId, a2.nodeId]);
    const page = await alice.api.get<{ items: Node[]; nextCursor: string | null }>('/v1/nodes?limit=1');
    expect(page.items.map((n) => n.id)).toEqual([a1.nodeId]);
    const page2 = await alice.api.get<{ items: Node[] }>(`/v1/nodes?limit=1&cursor=${page.nextCursor}`);
    expect(page2.items.map((n) => n.id)).toEqual([a2.nodeId]);

    for (const call of [
      () => alice.api.get(`/v1/nodes/${b1.nodeId}`),
      () => alice.api.get(`/v1/nodes/${b1.nodeId}/metrics`),
      () => alice.api.patch(`/v1/nodes/${b1.nodeId}`, { priceGpuHour: 9 }),
      () => alice.api.delete(`/v1/nodes/${b1.nodeId}`),
    ]) {
      expect((await refusal(call())).status).toBe(404);
    }
    const bobs = await bob.api.get<Node>(`/v1/nodes/${b1.nodeId}`);
    expect(bobs.status).toBe('online');
    expect(bobs.priceGpuHour).toBe(0);
    // A client key cannot list nodes.
    const client = await h.newAccount('client');
    expect((await refusal(client.api.get('/v1/nodes'))).status).toBe(403);
  });

  it('changes prices, labels and region', async () => {
    const a = await enroll(h);
    const updated = await a.provider.api.patch<Node>(`/v1/nodes/${a.nodeId}`, {
      priceGpuHour: 1.25,
      priceCpuHour: 0.015,
      labels: { tier: 'silver' },
      region: 'us-east',
    });
    expect(updated).toMatchObject({ priceGpuHour: 1.25, priceCpuHour: 0.015, labels: { tier: 'silver' }, region: 'us-east' });
    const [row] = await db().select().from(nodes).where(eq(nodes.id, a.nodeId));
    expect(row!.priceGpuHourMicros).toBe(1_250_000);
    const cleared = await a.provider.api.patch<Node>(`/v1/nodes/${a.nodeId}`, { region: null });
    expect(cleared.region).toBeNull();
    expect(cleared.priceGpuHour).toBe(1.25);
    for (const body of [{ priceGpuHour: -1 }, { priceGpuHour: 0.0000001 }, { region: 'Not A Region' }, {}, { status: 'online' }]) {
      expect((await refusal(a.provider.api.patch(`/v1/nodes/${a.nodeId}`, body))).status).toBe(400);
    }
  });

  it('retires a node without live jobs; its agent is refused from then on, even with a token it used before', async () => {
    const a = await enroll(h);
    const client = await h.newAccount('client');
    const job = await client.api.post<{ id: string }>('/v1/jobs', { name: 'busy', image: 'busybox:latest', command: ['true'], resources: { cpu: 1, memoryMb: 64 } });
    await db().update(jobs).set({ status: 'running', nodeId: a.nodeId, leaseEpoch: 1, attempts: 1 }).where(eq(jobs.id, job.id));
    // The token is verified once here and cached.
    expect((await a.heartbeat({ jobs: [], metrics: metricsFor(a.hardware) })).status).toBe(200);
    const busy = await refusal(a.provider.api.delete(`/v1/nodes/${a.nodeId}`));
    expect(busy.status).toBe(409);
    expect(busy.problem?.detail).toMatch(/1 job/);

    await db().update(jobs).set({ status: 'succeeded', nodeId: a.nodeId }).where(eq(jobs.id, job.id));
    const retired = await a.provider.api.delete<Node>(`/v1/nodes/${a.nodeId}`);
    expect(retired.status).toBe('retired');
    const res = await a.heartbeat({ jobs: [], metrics: metricsFor(a.hardware) });
    expect(res.status).toBe(401);
    expect((await res.json()).detail).toMatch(/retired/);
    const fresh = await a.heartbeat({ jobs: [], metrics: metricsFor(a.hardware) }, await a.token({}));
    expect(fresh.status).toBe(401);
    const listed = await a.provider.api.get<{ items: Node[] }>('/v1/nodes');
    expect(listed.items.map((n) => n.id)).not.toContain(a.nodeId);
    const asked = await a.provider.api.get<{ items: Node[] }>('/v1/nodes?status=retired');
    expect(asked.items.map((n) => n.id)).toContain(a.nodeId);
  });
});

describe.skipIf(dbSkipReason)('offline sweep', () => {
  let h: Harness;
  beforeAll(async () => {
    h = await startHarness({ GANTRY_NODE_TTL_SECONDS: '1' });
  });
  afterAll(async () => h?.close());

  it('marks a silent node offline after the TTL and online again at its next heartbeat', async () => {
    const a = await enroll(h);
    const status = async () => (await a.provider.api.get<Node>(`/v1/nodes/${a.nodeId}`)).status;
    expect(await status()).toBe('online');
    await until('the node to go offline', async () => (await status()) === 'offline');
    const res = await a.heartbeat({ jobs: [], metrics: metricsFor(a.hardware) });
    expect(res.status).toBe(200);
    expect(await status()).toBe('online');
    const count = await h.testDb.database.rows<{ n: unknown }>(sql`select count(*) as n from nodes where status = 'online'`);
    expect(Number(count[0]!.n)).toBeGreaterThanOrEqual(1);
  });
});
