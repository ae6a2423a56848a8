import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { dbSkipReason, startHarness, type Harness } from '../support/harness.ts';
import { a100, gpusOf, h100, seedNode } from '../support/pool-seed.ts';

/** The value of one sample line of the text format, by metric name and exact label set. */
function sample(text: string, name: string, labels: Record<string, string> = {}): number | undefined {
  const want = Object.entries(labels)
    .map(([k, v]) => `${k}="${v}"`)
    .sort()
    .join(',');
  for (const line of text.split('\n')) {
    const m = line.match(/^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/);
    if (!m || m[1] !== name) continue;
    const got = (m[2] ?? '').split(/,(?=[a-zA-Z_]+=")/).filter(Boolean).sort().join(',');
    if (got === want) return Number(m[3]);
  }
  return undefined;
}

describe.skipIf(dbSkipReason)('GET /metrics', () => {
  let h: Harness;
  beforeAll(async () => {
    h = await startHarness({ GANTRY_POOL_CACHE_MS: '0' });
    const provider = await h.newAccount('provider');
    const db = h.coordinator.deps.database.db;
    const now = Date.now();
    await seedNode(db, provider.accountId, { pricePerGpuHour: 2, leaseExpiries: 3, lastHeartbeatAt: new Date(now - 4_000), gpus: [...gpusOf(h100, 81_559, 2), { model: h100, memoryMb: 81_559, jobId: 'job_busyseed000000000000000' }] });
    await seedNode(db, provider.accountId, { pricePerGpuHour: 3, leaseExpiries: 1, lastHeartbeatAt: new Date(now - 10_000), gpus: gpusOf(h100, 81_559, 1) });
    await seedNode(db, provider.accountId, { status: 'offline', lastHeartbeatAt: new Date(now - 600_000), gpus: gpusOf(a100, 40_960, 4) });
    const client = await h.newAccount('client');
    for (const name of ['q1', 'q2']) {
      await client.api.post('/v1/jobs', { name, image: 'busybox:latest', command: ['true'], resources: { cpu: 1, memoryMb: 64, gpus: 1, gpu: { model: 'NVIDIA B200' } } });
    }
  });
  afterAll(async () => h?.close());

  it('serves the Prometheus text format with pool gauges, queue, expiries and heartbeat lag', async () => {
    await h.fetch('/v1/pool');
    const res = await h.fetch('/metrics');
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toMatch(/^text\/plain; version=0\.0\.4/);
    const text = await res.text();
    expect(text).toContain('# TYPE gantry_pool_gpus gauge');
    expect(sample(text, 'gantry_pool_gpus', { model: h100, kind: 'gpu', state: 'free' })).toBe(3);
    expect(sample(text, 'gantry_pool_gpus', { model: h100, kind: 'gpu', state: 'busy' })).toBe(1);
    expect(sample(text, 'gantry_pool_gpus', { model: a100, kind: 'gpu', state: 'offline' })).toBe(4);
    expect(sample(text, 'gantry_pool_gpu_price_per_hour', { model: h100, kind: 'gpu', stat: 'max' })).toBe(3);
    expect(sample(text, 'gantry_pool_nodes', { state: 'online' })).toBe(2);
    expect(sample(text, 'gantry_queue_depth', { model: 'NVIDIA B200' })).toBe(2);
    expect(sample(text, 'gantry_queue_oldest_wait_seconds')).toBeGreaterThanOrEqual(0);
    expect(sample(text, 'gantry_lease_expiries_total')).toBe(4);
    expect(text).toContain('# TYPE gantry_placements_total counter');
    // Online nodes only: the offline one's ten minutes do not count.
    const lag = sample(text, 'gantry_node_heartbeat_lag_seconds', { stat: 'max' })!;
    expect(lag).toBeGreaterThanOrEqual(10);
    expect(lag).toBeLessThan(120);
  });

  it("counts the scheduler's placements", async () => {
    const client = await h.newAccount('client');
    const before = sample(await (await h.fetch('/metrics')).text(), 'gantry_placements_total') ?? 0;
    await client.api.post('/v1/jobs', { name: 'fits', image: 'busybox:latest', command: ['true'], resources: { cpu: 1, memoryMb: 64, gpus: 0 } });
    const deadline = Date.now() + 15_000;
    let placed = before;
    while (placed === before && Date.now() < deadline) {
      placed = sample(await (await h.fetch('/metrics')).text(), 'gantry_placements_total') ?? 0;
      if (placed === before) await new Promise((r) => setTimeout(r, 100));
    }
    expect(placed).toBe(before + 1);
  });

  it('times HTTP requests by route pattern, not by path', async () => {
    const client = await h.newAccount('client');
    await h.fetch('/v1/jobs/job_00000000000000000000zz', { key: client.key });
    const text = await (await h.fetch('/metrics')).text();
    const count = sample(text, 'gantry_http_request_duration_seconds_count', { method: 'GET', route: '/v1/pool', status: '200' });
    expect(count).toBeGreaterThanOrEqual(1);
    expect(sample(text, 'gantry_http_request_duration_seconds_count', { method: 'GET', route: '/v1/jobs/:id', status: '404' })).toBe(1);
    expect(text).not.toContain('job_00000000000000000000zz');
  });
});
