// normalizeNvidiaSmi as a pure function: fixtures parsed the way node-nvidia-smi parses them
// (xml2js, explicitArray false), then the shapes xml2js gives for odd input.
import { describe, expect, it } from 'vitest';
import { type NvidiaSmiResult, normalizeNvidiaSmi } from '../../../provider-agent/hardware/nvidia.ts';
import { GpuDevice, maxGpusPerNode } from '../../../shared/hardware.ts';
import { parseFixtureXml } from '../../support/fake-nvidia-smi.ts';

const a100Uuid = 'GPU-27b94a00-ed54-5c24-b1fd-1054085de32a';

describe('normalizeNvidiaSmi', () => {
  it('names MIG devices by the MIG UUIDs -L gave, matched on parent UUID and device index', async () => {
    const result = (await parseFixtureXml('a100-sxm4-40gb-mig-v11.xml')) as NvidiaSmiResult;
    const got = normalizeNvidiaSmi(result, [
      // Only device 1 has a listed MIG UUID (masked); device 0 keeps <parent>:<gi>:<ci>.
      { parentUuid: a100Uuid, migIndex: 1, uuid: 'MIG-00000000-0000-0000-0000-000000000001' },
      { parentUuid: 'GPU-someone-else', migIndex: 0, uuid: 'MIG-00000000-0000-0000-0000-000000000002' },
    ]);
    expect(got.gpus.map((g) => [g.id, g.uuid, g.index, g.mig])).toEqual([
      [`${a100Uuid}:1:0`, a100Uuid, 0, { index: 0, gpuInstanceId: 1, computeInstanceId: 0 }],
      ['MIG-00000000-0000-0000-0000-000000000001', a100Uuid, 0, { index: 1, gpuInstanceId: 2, computeInstanceId: 0 }],
    ]);
  });

  it('every unit it gives passes the shared schema', async () => {
    const result = (await parseFixtureXml('tesla-k80-x4-azure-v10.xml')) as NvidiaSmiResult;
    for (const gpu of normalizeNvidiaSmi(result).gpus) expect(GpuDevice.parse(gpu)).toEqual(gpu);
  });

  it('a MIG-enabled GPU with no MIG devices advertises nothing, with a warning', () => {
    const result: NvidiaSmiResult = {
      nvidia_smi_log: {
        driver_version: '510.47.03',
        cuda_version: '11.6',
        attached_gpus: '1',
        gpu: {
          $: { id: '00000000:00:04.0' },
          product_name: 'NVIDIA A100-SXM4-40GB',
          uuid: a100Uuid,
          mig_mode: { current_mig: 'Enabled', pending_mig: 'Enabled' },
          mig_devices: 'None',
          fb_memory_usage: { total: '40960 MiB' },
        },
      },
    };
    expect(normalizeNvidiaSmi(result)).toEqual({
      gpus: [],
      warnings: [`${a100Uuid} has MIG enabled and no MIG devices: nothing advertised for it`],
    });
  });

  it('N/A, whitespace-only elements and missing elements become null or a warning, not a crash', () => {
    const result: NvidiaSmiResult = {
      nvidia_smi_log: {
        driver_version: '384.66',
        cuda_version: 'N/A',
        gpu: [
          { $: { id: '00000000:01:00.0' }, product_name: 'GeForce GTX 1070', uuid: 'GPU-a', fb_memory_usage: { total: 'N/A' }, pci: '\n  ' },
          { $: { id: '00000000:02:00.0' }, product_name: 'GeForce GTX 1070', uuid: '\n   ' },
          { product_name: 'GeForce GTX 1070', uuid: 'GPU-a', fb_memory_usage: { total: '8114 MiB' } },
        ],
      },
    };
    const got = normalizeNvidiaSmi(result);
    expect(got.gpus).toEqual([
      {
        id: 'GPU-a',
        index: 0,
        uuid: 'GPU-a',
        model: 'GeForce GTX 1070',
        memoryMb: 0,
        driverVersion: '384.66',
        cudaVersion: null,
        pciBusId: '00000000:01:00.0',
        mig: null,
      },
    ]);
    expect(got.warnings).toEqual([
      'GPU-a reports no framebuffer size; advertised as 0 MiB',
      'GPU 1 (00000000:02:00.0) reports no UUID; skipped',
      'GPU-a is listed twice; advertised once',
    ]);
  });

  it('no <nvidia_smi_log>, or no GPUs in it', () => {
    expect(normalizeNvidiaSmi(undefined).gpus).toEqual([]);
    expect(normalizeNvidiaSmi({}).warnings).toEqual(['nvidia-smi -q -x printed no <nvidia_smi_log>: no GPUs advertised']);
    expect(normalizeNvidiaSmi({ nvidia_smi_log: { driver_version: '590.44.01', attached_gpus: '0' } })).toEqual({
      gpus: [],
      warnings: ['nvidia-smi lists no GPUs'],
    });
  });

  it(`stops at ${maxGpusPerNode} units, the most a report may carry`, () => {
    const gpu = (i: number) => ({ product_name: 'Tesla T4', uuid: `GPU-${i}`, fb_memory_usage: { total: '15360 MiB' } });
    const got = normalizeNvidiaSmi({
      nvidia_smi_log: { driver_version: '515.105.01', gpu: Array.from({ length: maxGpusPerNode + 6 }, (_, i) => gpu(i)) },
    });
    expect(got.gpus).toHaveLength(maxGpusPerNode);
    expect(got.warnings).toEqual([`more than ${maxGpusPerNode} GPU units; the rest are not advertised`]);
  });

  it('a value the shared schema refuses drops that unit with the reason', () => {
    const got = normalizeNvidiaSmi({
      nvidia_smi_log: { driver_version: '515.105.01', gpu: { product_name: 'Tesla T4', uuid: 'GPU-{bad}', fb_memory_usage: { total: '15360 MiB' } } },
    });
    expect(got.gpus).toEqual([]);
    expect(got.warnings[0]).toMatch(/^GPU-\{bad\} skipped: id /);
  });
});
