import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { DryRun, Offers } from '../../shared/pool.ts';
import { dbSkipReason, startHarness, type Harness } from '../support/harness.ts';
import { modelMatches } from '../../coordinator/scheduler/feasibility.ts';
import { a100, gpusOf, h100, seedNode } from '../support/pool-seed.ts';

const spec = (resources: Record<string, unknown>, extra: Record<string, unknown> = {}) => ({
  name: 'dry',
  image: 'busybox:latest',
  command: ['true'],
  resources,
  ...extra,
});

describe.skipIf(dbSkipReason)('offers and dry runs', () => {
  let h: Harness;
  let client: Awaited<ReturnType<Harness['newAccount']>>;
  let providerId: string;
  const node: Record<string, string> = {};

  beforeAll(async () => {
    h = await startHarness({ GANTRY_POOL_CACHE_MS: '0' });
    const provider = await h.newAccount('provider');
    providerId = provider.accountId;
    client = await h.newAccount('client');
    const db = h.coordinator.deps.database.db;
    const seeds = {
      // 4 H100, one busy, at 3.0 per GPU-hour and 0.1 per core-hour
      cheap: { region: 'eu-west', labels: { tier: 'gold' }, cpu: 32, allocatedCpu: 4, pricePerGpuHour: 3, pricePerCpuHour: 0.1, jobsSucceeded: 12, jobsFailed: 1, leaseExpiries: 2,
        gpus: [...gpusOf(h100, 81_559, 3), { model: h100, memoryMb: 81_559, jobId: 'job_busyseed000000000000000' }] },
      // 8 H100 at 4.0, in another region
      pricey: { region: 'us-east', cpu: 64, pricePerGpuHour: 4, gpus: gpusOf(h100, 81_559, 8, { cudaVersion: '12.2' }) },
      // 2 A100 40 GB at 1.0, few cores free
      small: { region: 'eu-west', cpu: 4, allocatedCpu: 3, pricePerGpuHour: 1, gpus: gpusOf(a100, 40_960, 2) },
      // not offered: offline and draining
      down: { region: 'eu-west', status: 'offline' as const, pricePerGpuHour: 0.1, gpus: gpusOf(h100, 81_559, 8) },
      drain: { region: 'eu-west', draining: true, pricePerGpuHour: 0.1, gpus: gpusOf(h100, 81_559, 8) },
    };
    for (const [name, s] of Object.entries(seeds)) node[name] = (await seedNode(db, providerId, { name, ...s })).nodeId;
  });
  afterAll(async () => h?.close());

  it('lists free capacity per node for the asked shape, cheapest first, provider not named', async () => {
    const offers = await client.api.get<Offers>('/v1/offers?gpuModel=h100&gpus=2');
    expect(offers.shape).toEqual({ gpus: 2, cpu: 0, memoryMb: 0 });
    expect(offers.items.map((o) => o.nodeId)).toEqual([node.cheap, node.pricey]);
    const [first] = offers.items;
    expect(first).toMatchObject({
      region: 'eu-west',
      labels: { tier: 'gold' },
      gpu: { model: h100, kind: 'gpu', memoryMb: 81_559, free: 3, total: 4 },
      cpuFree: 28,
      pricePerGpuHour: 3,
      pricePerHour: 6,
      record: { jobsSucceeded: 12, jobsFailed: 1, leaseExpiries: 2 },
    });
    const text = JSON.stringify(offers);
    expect(text).not.toContain(providerId);
    expect(text).not.toContain('"cheap"');
  });

  it('narrows by GPU count, memory, price, region and CPU', async () => {
    const ids = async (q: string) => (await client.api.get<Offers>(`/v1/offers?${q}`)).items.map((o) => o.nodeId);
    expect(await ids('gpus=4&gpuModel=H100')).toEqual([node.pricey]);
    expect(await ids('gpus=1&minGpuMemoryMb=50000')).toEqual([node.cheap, node.pricey]);
    expect(await ids('gpus=1')).toEqual([node.small, node.cheap, node.pricey]);
    expect(await ids('gpus=2&maxPricePerHour=7')).toEqual([node.small, node.cheap]);
    expect(await ids('gpus=1&region=us-east')).toEqual([node.pricey]);
    expect(await ids('gpus=1&cpu=2')).toEqual([node.cheap, node.pricey]);
    // The CPU price counts in the shape's price: 1 GPU at 3.0 + 10 cores at 0.1.
    const withCpu = await client.api.get<Offers>('/v1/offers?gpus=1&cpu=10&region=eu-west');
    expect(withCpu.items[0]!.pricePerHour).toBe(4);
    // CPU only: every live node, no GPU named.
    const cpu = await client.api.get<Offers>('/v1/offers?gpus=0&cpu=8');
    expect(cpu.items.map((o) => o.nodeId).sort()).toEqual([node.cheap, node.pricey].sort());
    expect(cpu.items.every((o) => o.gpu === null)).toBe(true);
  });

  it('needs a client key and rejects bad filters as problem+json', async () => {
    expect((await h.fetch('/v1/offers')).status).toBe(401);
    const provider = await h.newAccount('provider');
    expect((await h.fetch('/v1/offers', { key: provider.key })).status).toBe(403);
    const bad = await h.fetch('/v1/offers?gpus=-1&region=EU WEST', { key: client.key });
    expect(bad.status).toBe(400);
    const problem = await bad.json();
    expect(problem.errors.map((e: { path: string }) => e.path).sort()).toEqual(['query.gpus', 'query.region']);
  });

  it('dry-runs a job that fits: the offers it would take first and the cost per hour', async () => {
    const run = await client.api.post<DryRun>('/v1/jobs/dry-run', spec({ cpu: 2, memoryMb: 4096, gpus: 2, gpu: { model: 'H100' } }, { maxPricePerHour: 10 }));
    expect(run.fits).toBe(true);
    expect(run.offers.map((o) => o.nodeId)).toEqual([node.cheap, node.pricey]);
    expect(run.estimatedCostPerHour).toBe(6.2);
    expect(run.feasibleNodes).toBe(2);
    expect(run.ruledOut).toEqual([
      { constraint: 'offline', nodes: 1, detail: '1 node offline' },
      { constraint: 'draining', nodes: 1, detail: '1 node draining (taking no new work)' },
      { constraint: 'gpu_model', nodes: 1, detail: '1 node with no H100 GPU' },
    ]);
    // Nothing was queued.
    const jobs = await client.api.get<{ items: unknown[] }>('/v1/jobs');
    expect(jobs.items).toHaveLength(0);
  });

  it('says which constraint rules each group of nodes out when none fits', async () => {
    const run = await client.api.post<DryRun>(
      '/v1/jobs/dry-run',
      spec({ cpu: 8, memoryMb: 4096, gpus: 4, gpu: { model: 'H100', minCudaVersion: '12.4' } }, { maxPricePerHour: 12 }),
    );
    expect(run.fits).toBe(false);
    expect(run.offers).toEqual([]);
    expect(run.estimatedCostPerHour).toBeNull();
    expect(Object.fromEntries(run.ruledOut.map((r) => [r.constraint, r.nodes]))).toEqual({
      offline: 1,
      draining: 1,
      gpu_model: 1, // small: A100 only
      cuda: 1, // pricey: CUDA 12.2
      gpus_busy: 1, // cheap: 4 H100 but one is busy
    });
    const byPrice = await client.api.post<DryRun>('/v1/jobs/dry-run', spec({ cpu: 1, memoryMb: 1024, gpus: 8 }, { maxPricePerHour: 20 }));
    const price = byPrice.ruledOut.find((r) => r.constraint === 'price')!;
    expect(price).toEqual({ constraint: 'price', nodes: 1, detail: '1 node over the maximum of 20 per hour (the cheapest asks 32)' });
    const labelled = await client.api.post<DryRun>('/v1/jobs/dry-run', spec({ cpu: 1, memoryMb: 1024, gpus: 1 }, { constraints: { nodeLabels: { tier: 'gold' }, region: 'eu-west' } }));
    expect(labelled.offers.map((o) => o.nodeId)).toEqual([node.cheap]);
    expect(Object.fromEntries(labelled.ruledOut.map((r) => [r.constraint, r.nodes]))).toMatchObject({ region: 1, labels: 1 });
  });

  it('validates the spec with the same schema as submit', async () => {
    const res = await h.fetch('/v1/jobs/dry-run', {
      method: 'POST',
      key: client.key,
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify(spec({ cpu: 1, memoryMb: 1024, gpus: 1 }, { colour: 'red' })),
    });
    expect(res.status).toBe(400);
    expect((await res.json()).errors).toEqual([{ path: 'colour', message: 'unknown field' }]);
  });

  it('matches GPU models exactly as the scheduler does', async () => {
    const names = ['NVIDIA A100-SXM4-80GB', 'NVIDIA A10', 'NVIDIA H100 PCIe', 'NVIDIA GeForce RTX 4090', 'Tesla T4'];
    const provider = await h.newAccount('provider');
    const byName: Record<string, string> = {};
    for (const model of names) {
      byName[model] = (await seedNode(h.coordinator.deps.database.db, provider.accountId, { region: 'ap-south', pricePerGpuHour: 9, gpus: gpusOf(model, 16_000, 1) })).nodeId;
    }
    for (const asked of ['A10', 'a100', 'A100 SXM4', 'sxm4-80gb', 'H100', 'h100 pcie', 'RTX 4090', 'GeForce-RTX', '4090 RTX', 'T4', 'NVIDIA', 'A1']) {
      const offers = await client.api.get<Offers>(`/v1/offers?region=ap-south&gpus=1&gpuModel=${encodeURIComponent(asked)}`);
      const expected = names.filter((n) => modelMatches(asked, n)).map((n) => byName[n]).sort();
      expect(offers.items.map((o) => o.nodeId).sort(), asked).toEqual(expected);
    }
  });
});
