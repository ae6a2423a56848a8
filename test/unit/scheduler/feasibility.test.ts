import { describe, expect, it } from 'vitest';
import {
  decide,
  describePending,
  ModelMatcher,
  modelMatches,
  parseCuda,
  priceMilliMicros,
  type JobRequest,
  type NodeView,
} from '../../../coordinator/scheduler/feasibility.ts';

const job = (over: Partial<JobRequest> = {}): JobRequest => ({
  id: 'job_x',
  cpuMillis: 1000,
  memoryMb: 1024,
  diskMb: 10_240,
  gpuCount: 0,
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

const gpu = (model: string, i = 0, memoryMb = 81_559, cuda: number | null = 12_004) => ({ id: `GPU-${model}-${i}`, index: i, model, memoryMb, cuda });

const node = (over: Partial<NodeView> = {}): NodeView => ({
  id: 'node_a',
  accountId: 'acct_p',
  labels: {},
  region: null,
  priceGpuHourMicros: 0,
  priceCpuHourMicros: 0,
  freeCpuMillis: 16_000,
  freeMemoryMb: 65_536,
  freeDiskMb: 100_000,
  freeGpus: [],
  lastPlacedAtMs: 0,
  ...over,
});

describe('model names match by words in a row', () => {
  it.each([
    ['H100', 'NVIDIA H100 80GB HBM3', true],
    ['h100', 'NVIDIA H100 80GB HBM3', true],
    ['RTX 4090', 'NVIDIA GeForce RTX 4090', true],
    ['rtx-4090', 'NVIDIA GeForce RTX 4090', true],
    ['A10', 'NVIDIA A10', true],
    ['A10', 'NVIDIA A100-SXM4-40GB', false],
    ['A100', 'NVIDIA A100-SXM4-40GB', true],
    ['A100 SXM4', 'NVIDIA A100-SXM4-40GB', true],
    ['SXM4 A100', 'NVIDIA A100-SXM4-40GB', false],
    ['V100', 'Tesla V100S-PCIE-32GB', false],
    ['V100', 'Tesla V100-PCIE-32GB', true],
    ['RTX 4090', 'NVIDIA GeForce RTX 4080', false],
    ['4090', 'NVIDIA GeForce RTX 4090', true],
    ['GeForce 4090', 'NVIDIA GeForce RTX 4090', false],
    ['H100 80GB HBM3 extra', 'NVIDIA H100 80GB HBM3', false],
  ])('%s in %s: %s', (want, name, ok) => {
    expect(modelMatches(want, name)).toBe(ok);
    expect(new ModelMatcher().matches(want, name)).toBe(ok);
  });
});

describe('decide', () => {
  const models = new ModelMatcher();

  it('gives the GPUs that fit, lowest index first, with the price', () => {
    const n = node({ freeGpus: [gpu('NVIDIA L4', 0), gpu('NVIDIA L4', 1), gpu('NVIDIA L4', 2)], priceGpuHourMicros: 500_000, priceCpuHourMicros: 10_000 });
    const d = decide(job({ gpuCount: 2, cpuMillis: 1500 }), n, models);
    expect(d).toEqual({ fits: true, gpus: [n.freeGpus[0], n.freeGpus[1]], priceMilliMicros: 2 * 500_000 * 1000 + 1500 * 10_000 });
  });

  it('names the first rule a node breaks', () => {
    const n = node({ freeGpus: [gpu('NVIDIA A100-SXM4-40GB', 0, 40_960, 11_008)], labels: { zone: 'a' }, region: 'eu-west', priceGpuHourMicros: 3_000_000 });
    expect(decide(job({ nodeId: 'node_b' }), n, models)).toEqual({ fits: false, reason: 'node' });
    expect(decide(job({ providerId: 'acct_q' }), n, models)).toEqual({ fits: false, reason: 'provider' });
    expect(decide(job({ region: 'us-east' }), n, models)).toEqual({ fits: false, reason: 'region' });
    expect(decide(job({ labels: { zone: 'b' } }), n, models)).toEqual({ fits: false, reason: 'labels' });
    expect(decide(job({ gpuCount: 1, gpuModel: 'A10' }), n, models)).toEqual({ fits: false, reason: 'gpus' });
    expect(decide(job({ gpuCount: 1, gpuMinMemoryMb: 80_000 }), n, models)).toEqual({ fits: false, reason: 'gpus' });
    expect(decide(job({ gpuCount: 1, minCuda: 12_000 }), n, models)).toEqual({ fits: false, reason: 'gpus' });
    expect(decide(job({ gpuCount: 2 }), n, models)).toEqual({ fits: false, reason: 'gpus' });
    expect(decide(job({ cpuMillis: 16_001 }), n, models)).toEqual({ fits: false, reason: 'cpu' });
    expect(decide(job({ memoryMb: 65_537 }), n, models)).toEqual({ fits: false, reason: 'memory' });
    expect(decide(job({ diskMb: 100_001 }), n, models)).toEqual({ fits: false, reason: 'disk' });
    expect(decide(job({ diskMb: 100_000 }), n, models).fits).toBe(true);
    expect(decide(job({ gpuCount: 1, maxPriceMicros: 2_999_999 }), n, models)).toEqual({ fits: false, reason: 'price' });
    expect(decide(job({ gpuCount: 1, maxPriceMicros: 3_000_000, labels: { zone: 'a' }, region: 'eu-west', gpuModel: 'A100', minCuda: 11_008 }), n, models).fits).toBe(true);
  });

  it('fits a node whose labels include the asked ones', () => {
    expect(decide(job({ labels: { zone: 'a' } }), node({ labels: { zone: 'a', disk: 'nvme' } }), models).fits).toBe(true);
  });
});

describe('prices', () => {
  it('adds GPUs and cores exactly, in milli-micro-units', () => {
    // 2 × 2.50 + 1.5 cores × 0.10 = 5.15 /hour, compared without floats.
    const p = priceMilliMicros(2, 1500, 2_500_000, 100_000);
    expect(p).toBe(5_150_000_000);
    expect(p <= 5_150_000 * 1000).toBe(true);
    expect(p <= 5_149_999 * 1000).toBe(false);
  });

  it('stays exact past 2^53', () => {
    const p = priceMilliMicros(64, 1_024_000, 1_000_000_000_000, 1_000_000_000_000);
    expect(BigInt(Math.round(p))).toBe(64n * 1_000_000_000_000n * 1000n + 1_024_000n * 1_000_000_000_000n);
  });

  it('parses CUDA versions as numbers that compare', () => {
    expect(parseCuda('12.4')).toBe(12_004);
    expect(parseCuda('12.10')! > parseCuda('12.4')!).toBe(true);
    expect(parseCuda('N/A')).toBeNull();
    expect(parseCuda(null)).toBeNull();
  });
});

describe('the reason a job waits', () => {
  it('reads as the issue words it', () => {
    const j = job({ gpuCount: 2, gpuModel: 'H100', maxPriceMicros: 3_000_000 });
    expect(describePending(j, { price: 4, gpus: 3 }, 7)).toBe('no online node has 2 free GPUs of model H100 within 3.00/hour; 4 would fit without the price limit');
  });

  it('names CPU and memory only where they are missing, and the constraints asked', () => {
    const j = job({ gpuCount: 1, cpuMillis: 8000, memoryMb: 32_768, labels: { zone: 'a' }, region: 'eu-west', gpuMinMemoryMb: 40_000 });
    expect(describePending(j, { gpus: 2 }, 2)).toBe('no online node with labels zone=a in region eu-west has 1 free GPU with at least 40000 MB');
    expect(describePending(j, { cpu: 1 }, 2)).toBe(
      'no online node with labels zone=a in region eu-west has 1 free GPU with at least 40000 MB, 8 CPUs and 32768 MB of memory free',
    );
    expect(describePending(job({ cpuMillis: 500 }), {}, 1)).toBe('no online node has 0.5 free CPUs and 1024 MB of free memory');
    expect(describePending(job(), {}, 0)).toBe('no node is online and taking work');
  });
});

describe('registries and networks', () => {
  const models = new ModelMatcher();
  it('places a job only where its image’s registry is allowed and its network is taken', () => {
    const n = node({ registries: ['docker.io', '127.0.0.1:5000'], networks: ['none'] });
    expect(decide(job({ registry: 'ghcr.io', network: 'none' }), n, models)).toEqual({ fits: false, reason: 'registry' });
    expect(decide(job({ registry: 'docker.io', network: 'bridge' }), n, models)).toEqual({ fits: false, reason: 'network' });
    expect(decide(job({ registry: '127.0.0.1:5000', network: 'none' }), n, models).fits).toBe(true);
    // An agent that does not say (an older one) rules nothing out.
    expect(decide(job({ registry: 'ghcr.io', network: 'bridge' }), node(), models).fits).toBe(true);
  });

  it('names the registry and the network when they are why a job waits', () => {
    expect(describePending(job({ registry: 'ghcr.io' }), { registry: 2 }, 2)).toBe('no online node that pulls images from ghcr.io has 1 free CPU and 1024 MB of free memory');
    expect(describePending(job({ registry: 'docker.io', network: 'bridge' }), { network: 1 }, 1)).toMatch(/^no online node that isolates bridge networking has/);
  });
});
