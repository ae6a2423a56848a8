import { describe, expect, it } from 'vitest';
import { decide, ModelMatcher, type JobRequest, type NodeView } from '../../../coordinator/scheduler/feasibility.ts';
import { PassState } from '../../../coordinator/scheduler/placement.ts';
import { candidate, compareCandidates } from '../../../coordinator/scheduler/scoring.ts';
import { leaseCostMicros } from '../../../coordinator/jobs/transitions.ts';

const job = (over: Partial<JobRequest> = {}): JobRequest => ({
  id: 'job_x',
  cpuMillis: 1000,
  memoryMb: 1024,
  diskMb: 10_240,
  gpuCount: 1,
  gpuModel: null,
  gpuMinMemoryMb: null,
  minCuda: null,
  labels: null,
  region: null,
  nodeId: null,
  providerId: null,
  maxPriceMicros: null,
  ...over,
});

let n = 0;
const node = (gpus: number, over: Partial<NodeView> = {}): NodeView => {
  const id = `node_${++n}`;
  return {
    id,
    accountId: 'acct_p',
    labels: {},
    region: null,
    priceGpuHourMicros: 1_000_000,
    priceCpuHourMicros: 0,
    freeCpuMillis: 16_000,
    freeMemoryMb: 65_536,
    freeDiskMb: 100_000,
    freeGpus: Array.from({ length: gpus }, (_, i) => ({ id: `${id}-g${i}`, index: i, model: 'NVIDIA L4', memoryMb: 23_034, cuda: 12_004 })),
    lastPlacedAtMs: 0,
    ...over,
  };
};

describe('scoring: cheapest, then tightest fit, then least recently used', () => {
  const place = (nodes: NodeView[], j = job()) => {
    const out = new PassState(nodes, 1_000).place(j);
    return out.placed ? out.node.id : out.reason;
  };

  it('takes the cheapest node even when another fits tighter', () => {
    const cheap = node(8, { priceGpuHourMicros: 500_000 });
    const tight = node(1, { priceGpuHourMicros: 600_000 });
    expect(place([tight, cheap])).toBe(cheap.id);
  });

  it('among equal prices, leaves the fewest GPUs, then the least memory over', () => {
    const eight = node(8);
    const two = node(2);
    const twoSmall = node(2, { freeMemoryMb: 4096 });
    expect(place([eight, two, twoSmall])).toBe(twoSmall.id);
  });

  it('among equal fits, the node placed on longest ago', () => {
    const recent = node(2, { lastPlacedAtMs: 900 });
    const old = node(2, { lastPlacedAtMs: 100 });
    const never = node(2, { lastPlacedAtMs: 0 });
    expect(place([recent, old, never])).toBe(never.id);
    expect(place([recent, old])).toBe(old.id);
  });

  it('compares by price in exact units, then fit', () => {
    const a = candidate(node(2), 10, 1, 1000, 1024);
    const b = candidate(node(4), 10, 1, 1000, 1024);
    const c = candidate(node(1), 11, 1, 1000, 1024);
    expect([c, b, a].sort(compareCandidates).map((x) => x.leftoverGpus)).toEqual([1, 3, 0]);
  });

  it('takes what it placed out of the pass, so the next job sees it gone', () => {
    const only = node(2);
    const state = new PassState([only], 1_000);
    expect(state.place(job({ gpuCount: 2 })).placed).toBe(true);
    const second = state.place(job({ gpuCount: 1 }));
    expect(second).toEqual({ placed: false, reason: 'no online node has 1 free GPU' });
    expect(only.freeGpus).toEqual([]);
    expect(only.freeCpuMillis).toBe(15_000);
  });

  it('remembers a shape that fits nowhere for the rest of the pass', () => {
    const state = new PassState([node(1)], 1_000);
    const models = new ModelMatcher();
    void models;
    const a = state.place(job({ gpuCount: 2 }));
    const b = state.place(job({ gpuCount: 2, id: 'job_y' }));
    expect(a).toEqual(b);
    expect(state.place(job({ gpuCount: 1 })).placed).toBe(true);
  });
});

describe('lease cost', () => {
  it('charges gpus × GPU-hour + cores × core-hour for the time held, exactly', () => {
    // 2 GPUs at 2.50 and 1.5 cores at 0.10 for 90 minutes: (5 + 0.15) × 1.5 = 7.725
    expect(leaseCostMicros(2, 1500, 2_500_000, 100_000, 90 * 60_000)).toBe(7_725_000);
    // One second of one GPU at 3.60/hour is 0.001.
    expect(leaseCostMicros(1, 0, 3_600_000, 0, 1000)).toBe(1000);
    expect(leaseCostMicros(0, 1000, 0, 0, 3_600_000)).toBe(0);
  });
});

describe('a kept pass state with changed nodes read again (PassState.replace)', () => {
  const h100 = (id: string, i: number) => ({ id: `${id}-h${i}`, index: i, model: 'NVIDIA H100 80GB HBM3', memoryMb: 81_559, cuda: 12_004 });

  it('sees GPUs freed on a node that had none free of the model when its lists were built', () => {
    const busy = node(0, { priceGpuHourMicros: 300_000 });
    const dear = node(0, { priceGpuHourMicros: 900_000 });
    dear.freeGpus = [h100(dear.id, 0)];
    const state = new PassState([busy, dear], 1_000);
    // Builds the H100 list while only `dear` has a free H100.
    expect(state.place(job({ gpuModel: 'H100' }))).toMatchObject({ placed: true, node: { id: dear.id } });
    state.beginPass(2_000);
    state.replace([busy.id], [{ ...busy, freeGpus: [h100(busy.id, 0)] }]);
    expect(state.place(job({ gpuModel: 'H100' }))).toMatchObject({ placed: true, node: { id: busy.id } });
  });

  it('drops a node that no longer takes work from every list, and adds one that joined', () => {
    const a = node(2, { priceGpuHourMicros: 100_000 });
    const b = node(2, { priceGpuHourMicros: 500_000 });
    const state = new PassState([a, b], 1_000);
    expect(state.place(job({ gpuModel: 'L4' }))).toMatchObject({ node: { id: a.id } });
    state.beginPass(2_000);
    const c = node(1, { priceGpuHourMicros: 50_000 });
    state.replace([a.id, c.id], [c]);
    expect(state.nodes.map((x) => x.id).sort()).toEqual([b.id, c.id].sort());
    expect(state.place(job({ gpuModel: 'L4' }))).toMatchObject({ node: { id: c.id } });
    expect(state.place(job({ gpuModel: 'L4' }))).toMatchObject({ node: { id: b.id } });
    expect(state.place(job({ gpuCount: 0 }))).toMatchObject({ placed: true });
    state.beginPass(3_000);
    state.replace([b.id, c.id], []);
    expect(state.place(job({ gpuModel: 'L4' }))).toMatchObject({ placed: false });
    expect(state.nodes).toEqual([]);
  });
});

describe('the walk from the cheapest node stops early and still finds the best node', () => {
  it('agrees with scoring every node, over random pools and jobs', () => {
    let seed = 42;
    const rand = () => (seed = (seed * 1_103_515_245 + 12_345) % 2 ** 31) / 2 ** 31;
    const pick = <T>(xs: readonly T[]) => xs[Math.floor(rand() * xs.length)]!;
    const modelNames = ['NVIDIA L4', 'NVIDIA H100 80GB HBM3', 'NVIDIA GeForce RTX 4090'];
    for (let round = 0; round < 200; round++) {
      const pool = Array.from({ length: 1 + Math.floor(rand() * 30) }, () => {
        const v = node(Math.floor(rand() * 5), {
          // Few distinct prices, so that ties (broken by fit, then age, then id) are common.
          priceGpuHourMicros: pick([0, 100_000, 200_000, 300_000]),
          priceCpuHourMicros: pick([0, 10_000, 20_000]),
          freeCpuMillis: pick([0, 2_000, 8_000]),
          lastPlacedAtMs: pick([0, 5]),
        });
        const model = pick(modelNames);
        v.freeGpus = v.freeGpus.map((g) => ({ ...g, model }));
        return v;
      });
      const j = job({
        gpuCount: Math.floor(rand() * 3),
        cpuMillis: pick([500, 2_000]),
        gpuModel: rand() < 0.5 ? pick(['L4', 'H100', '4090']) : null,
        maxPriceMicros: rand() < 0.3 ? pick([100_000, 400_000]) : null,
      });
      const models = new ModelMatcher();
      let want: ReturnType<typeof candidate> | null = null;
      for (const v of pool) {
        const d = decide(j, v, models);
        if (!d.fits || (j.maxPriceMicros !== null && d.priceMilliMicros > j.maxPriceMicros * 1000)) continue;
        const c = candidate(v, d.priceMilliMicros, j.gpuCount, j.cpuMillis, j.memoryMb);
        if (!want || compareCandidates(c, want) < 0) want = c;
      }
      const got = new PassState(pool.map((v) => ({ ...v, freeGpus: [...v.freeGpus] })), 1_000).place(j);
      expect(got.placed ? got.node.id : null, `round ${round}`).toBe(want?.node.id ?? null);
    }
  });
});
