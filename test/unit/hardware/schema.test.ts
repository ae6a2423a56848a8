// The shared schemas the coordinator validates registrations and heartbeats with: a good
// report passes as it is; anything malformed, unbounded or unknown is refused.
import { describe, expect, it } from 'vitest';
import { GpuDevice, HardwareReport, MetricsSample } from '../../../shared/hardware.ts';

const gpu: GpuDevice = {
  id: 'GPU-12345678-aaaa-bbbb-cccc-0123456789ab',
  index: 0,
  uuid: 'GPU-12345678-aaaa-bbbb-cccc-0123456789ab',
  model: 'NVIDIA RTX A5000',
  memoryMb: 24564,
  driverVersion: '590.44.01',
  cudaVersion: '13.1',
  pciBusId: '00000000:81:00.0',
  mig: null,
};
const migDevice: GpuDevice = {
  ...gpu,
  id: 'GPU-27b94a00-ed54-5c24-b1fd-1054085de32a:1:0',
  uuid: 'GPU-27b94a00-ed54-5c24-b1fd-1054085de32a',
  model: 'NVIDIA A100-SXM4-40GB',
  memoryMb: 19968,
  mig: { index: 0, gpuInstanceId: 1, computeInstanceId: 0 },
};
const report: HardwareReport = {
  host: {
    cpuCores: 16,
    cpuModel: 'AMD EPYC 7B13',
    memoryMb: 128_000,
    diskFreeMb: 500_000,
    os: 'Linux 6.1.0-18-amd64',
    arch: 'x64',
    hostname: 'gpu-box-1',
    containerRuntime: { kind: 'docker', version: '24.0.7' },
  },
  gpus: [gpu, migDevice],
  warnings: [],
};

function withGpu(change: Record<string, unknown>): unknown {
  return { ...report, gpus: [{ ...gpu, ...change }] };
}

describe('HardwareReport', () => {
  it('accepts a good report, whole GPUs and MIG devices, unchanged', () => {
    expect(HardwareReport.parse(report)).toEqual(report);
    expect(HardwareReport.parse({ ...report, host: { ...report.host, containerRuntime: { kind: 'none' } }, gpus: [] })).toBeTruthy();
  });

  const refused: [string, unknown][] = [
    ['negative memory', withGpu({ memoryMb: -1 })],
    ['fractional memory', withGpu({ memoryMb: 24564.5 })],
    ['memory as nvidia-smi prints it', withGpu({ memoryMb: '24564 MiB' })],
    ['absurd memory', withGpu({ memoryMb: 1e12 })],
    ['10,000 GPUs', { ...report, gpus: Array.from({ length: 10_000 }, (_, i) => ({ ...gpu, id: `GPU-${i}` })) }],
    ['65 GPUs', { ...report, gpus: Array.from({ length: 65 }, (_, i) => ({ ...gpu, id: `GPU-${i}` })) }],
    ['two units with one id', { ...report, gpus: [gpu, gpu] }],
    ['an unknown GPU field', withGpu({ serial: '0123456789012' })],
    ['an unknown top-level field', { ...report, extra: true }],
    ['an unknown host field', { ...report, host: { ...report.host, gpuCount: 2 } }],
    ['a CUDA version that is not one', withGpu({ cudaVersion: 'Not Found' })],
    ['an id with spaces', withGpu({ id: 'GPU 0' })],
    ['a 10 kB model name', withGpu({ model: 'x'.repeat(10_000) })],
    ['a control character', withGpu({ model: 'RTX\nA5000' })],
    ['a string index', withGpu({ index: '0' })],
    ['a missing field', { ...report, gpus: [{ ...gpu, uuid: undefined }] }],
    ['a MIG placement with extra fields', withGpu({ mig: { index: 0, gpuInstanceId: 1, computeInstanceId: 0, profile: '1g.5gb' } })],
    ['an unknown container runtime', { ...report, host: { ...report.host, containerRuntime: { kind: 'podman', version: '4' } } }],
    ['zero CPU cores', { ...report, host: { ...report.host, cpuCores: 0 } }],
    ['too many warnings', { ...report, warnings: Array.from({ length: 1000 }, () => 'w') }],
    ['a huge warning', { ...report, warnings: ['w'.repeat(100_000)] }],
  ];
  for (const [what, value] of refused) {
    it(`refuses ${what}`, () => {
      expect(HardwareReport.safeParse(value).success).toBe(false);
    });
  }
});

describe('MetricsSample', () => {
  const sample: MetricsSample = {
    at: '2026-01-02T03:04:05.000Z',
    host: { loadAvg1: 0.52, memoryUsedMb: 10_000 },
    gpus: [{ id: gpu.id, utilizationPct: null, memoryUsedMb: 38, temperatureC: 36, powerW: 66.92 }],
  };

  it('accepts a heartbeat sample, with or without its time', () => {
    expect(MetricsSample.parse(sample)).toEqual(sample);
    const { at: _at, ...untimed } = sample;
    expect(MetricsSample.parse(untimed)).toEqual(untimed);
  });

  const refused: [string, unknown][] = [
    ['utilization over 100 %', { ...sample, gpus: [{ ...sample.gpus[0], utilizationPct: 150 }] }],
    ['negative power', { ...sample, gpus: [{ ...sample.gpus[0], powerW: -3 }] }],
    ['"N/A" instead of null', { ...sample, gpus: [{ ...sample.gpus[0], temperatureC: 'N/A' }] }],
    ['negative load', { ...sample, host: { ...sample.host, loadAvg1: -1 } }],
    ['a time that is not one', { ...sample, at: 'yesterday' }],
    ['an unknown field', { ...sample, gpus: [{ ...sample.gpus[0], fanPct: 30 }] }],
    ['10,000 GPUs', { ...sample, gpus: Array.from({ length: 10_000 }, () => sample.gpus[0]) }],
  ];
  for (const [what, value] of refused) {
    it(`refuses ${what}`, () => {
      expect(MetricsSample.safeParse(value).success).toBe(false);
    });
  }
});
