// Every XML fixture, through the real node-nvidia-smi against a fake nvidia-smi that prints
// it. The expected values are read off each file by hand (product_name, uuid,
// fb_memory_usage/total, driver_version, cuda_version, pci_bus_id, mig_devices), not
// computed by the code under test.
import { readdir } from 'node:fs/promises';
import { afterEach, describe, expect, it } from 'vitest';
import { detectNvidiaGpus } from '../../../provider-agent/hardware/nvidia.ts';
import type { GpuDevice } from '../../../shared/hardware.ts';
import { createFakeNvidiaSmi, type FakeNvidiaSmi, fixturesDir } from '../../support/fake-nvidia-smi.ts';

type Whole = Omit<GpuDevice, 'id' | 'mig'>;

/** A whole GPU: its id is its UUID and it has no MIG placement. */
function whole(g: Whole): GpuDevice {
  return { id: g.uuid, ...g, mig: null };
}

interface Expected {
  gpus: GpuDevice[];
  warnings?: string[];
}

const expected: Record<string, Expected> = {
  'a100-sxm4-40gb-mig-v11.xml': {
    // MIG enabled with two MIG devices: two units, each with its own 19968 MiB, none for the whole GPU.
    gpus: [
      {
        id: 'GPU-27b94a00-ed54-5c24-b1fd-1054085de32a:1:0',
        index: 0,
        uuid: 'GPU-27b94a00-ed54-5c24-b1fd-1054085de32a',
        model: 'NVIDIA A100-SXM4-40GB',
        memoryMb: 19968,
        driverVersion: '510.47.03',
        cudaVersion: '11.6',
        pciBusId: '00000000:00:04.0',
        mig: { index: 0, gpuInstanceId: 1, computeInstanceId: 0 },
      },
      {
        id: 'GPU-27b94a00-ed54-5c24-b1fd-1054085de32a:2:0',
        index: 0,
        uuid: 'GPU-27b94a00-ed54-5c24-b1fd-1054085de32a',
        model: 'NVIDIA A100-SXM4-40GB',
        memoryMb: 19968,
        driverVersion: '510.47.03',
        cudaVersion: '11.6',
        pciBusId: '00000000:00:04.0',
        mig: { index: 1, gpuInstanceId: 2, computeInstanceId: 0 },
      },
    ],
  },
  'a10g-v11.xml': {
    gpus: [
      whole({
        index: 0,
        uuid: 'GPU-9a9a6c50-2a47-2f51-a902-b82c3b127e94',
        model: 'NVIDIA A10G',
        memoryMb: 23028,
        driverVersion: '515.105.01',
        cudaVersion: '11.7',
        pciBusId: '00000000:00:1E.0',
      }),
    ],
  },
  'grid-k520-v7-plain.xml': {
    // Schema v7 has no <cuda_version>; the bus id has a 4-digit domain.
    gpus: [
      whole({
        index: 0,
        uuid: 'GPU-cc96d6f4-7f66-e1fc-8179-a45dbd47664c',
        model: 'GRID K520',
        memoryMb: 4095,
        driverVersion: '352.99',
        cudaVersion: null,
        pciBusId: '0000:00:03.0',
      }),
    ],
  },
  'grid-k520-v7.xml': {
    // The same machine with `-q -x --dtd`: the inline DTD must not get in the way.
    gpus: [
      whole({
        index: 0,
        uuid: 'GPU-cc96d6f4-7f66-e1fc-8179-a45dbd47664c',
        model: 'GRID K520',
        memoryMb: 4095,
        driverVersion: '352.99',
        cudaVersion: null,
        pciBusId: '0000:00:03.0',
      }),
    ],
  },
  'grid-p4-1q-vgpu-windows-v11.xml': {
    gpus: [
      whole({
        index: 0,
        uuid: 'GPU-1b1ea7c7-1c4b-ed49-1c72-26c65f2dd207',
        model: 'GRID P4-1Q',
        memoryMb: 1024,
        driverVersion: '513.46',
        cudaVersion: '11.6',
        pciBusId: '00000000:00:0B.0',
      }),
    ],
  },
  'gtx1070-partial-v9.xml': {
    // attached_gpus says 6, the file lists 2; v9 has no <cuda_version>.
    gpus: [
      whole({
        index: 0,
        uuid: 'GPU-e511a7b2-f9d5-ba47-9b98-853732ca6c1b',
        model: 'GeForce GTX 1070',
        memoryMb: 8112,
        driverVersion: '384.66',
        cudaVersion: null,
        pciBusId: '00000000:01:00.0',
      }),
      whole({
        index: 1,
        uuid: 'GPU-28daffaf-8abe-aaf8-c298-4bd13aecb5e6',
        model: 'GeForce GTX 1070',
        memoryMb: 8114,
        driverVersion: '384.66',
        cudaVersion: null,
        pciBusId: '00000000:03:00.0',
      }),
    ],
    warnings: ['nvidia-smi says 6 GPUs are attached but lists 2; advertising those listed'],
  },
  'rtx-a5000-laptop-v12.xml': {
    gpus: [
      whole({
        index: 0,
        uuid: 'GPU-0946ec38-a612-7b0e-8df3-0e64fe5b111e',
        model: 'NVIDIA RTX A5000 Laptop GPU',
        memoryMb: 16384,
        driverVersion: '575.57.08',
        cudaVersion: '12.9',
        pciBusId: '00000000:01:00.0',
      }),
    ],
  },
  'rtx-a5000-x2-v13.xml': {
    // The first GPU in the file has minor_number 1: index follows the file's order.
    gpus: [
      whole({
        index: 0,
        uuid: 'GPU-12345678-aaaa-bbbb-cccc-0123456789ab',
        model: 'NVIDIA RTX A5000',
        memoryMb: 24564,
        driverVersion: '590.44.01',
        cudaVersion: '13.1',
        pciBusId: '00000000:81:00.0',
      }),
      whole({
        index: 1,
        uuid: 'GPU-12345678-aaaa-bbbb-cccc-0123456789cd',
        model: 'NVIDIA RTX A5000',
        memoryMb: 24564,
        driverVersion: '590.44.01',
        cudaVersion: '13.1',
        pciBusId: '00000000:C1:00.0',
      }),
    ],
  },
  'rtx-a5000-x2-same-uuid-v13.xml': {
    // Derived from rtx-a5000-x2-v13.xml (SOURCES.md): both GPUs say UUID …89ab. Two GPUs, told apart by bus id.
    gpus: [
      {
        id: 'GPU-12345678-aaaa-bbbb-cccc-0123456789ab/00000000:81:00.0',
        index: 0,
        uuid: 'GPU-12345678-aaaa-bbbb-cccc-0123456789ab',
        model: 'NVIDIA RTX A5000',
        memoryMb: 24564,
        driverVersion: '590.44.01',
        cudaVersion: '13.1',
        pciBusId: '00000000:81:00.0',
        mig: null,
      },
      {
        id: 'GPU-12345678-aaaa-bbbb-cccc-0123456789ab/00000000:C1:00.0',
        index: 1,
        uuid: 'GPU-12345678-aaaa-bbbb-cccc-0123456789ab',
        model: 'NVIDIA RTX A5000',
        memoryMb: 24564,
        driverVersion: '590.44.01',
        cudaVersion: '13.1',
        pciBusId: '00000000:C1:00.0',
        mig: null,
      },
    ],
    warnings: [
      'GPUs 0, 1 report the same UUID GPU-12345678-aaaa-bbbb-cccc-0123456789ab: advertised as 2, told apart by PCI bus id (00000000:81:00.0, 00000000:C1:00.0) and leased by index',
    ],
  },
  'rtx-pro-6000-blackwell-maxq-v13.xml': {
    gpus: [
      whole({
        index: 0,
        uuid: 'GPU-12345678-aaaa-bbbb-cccc-0123456789ab',
        model: 'NVIDIA RTX PRO 6000 Blackwell Max-Q Workstation Edition',
        memoryMb: 97887,
        driverVersion: '590.44.01',
        cudaVersion: '13.1',
        pciBusId: '00000000:61:00.0',
      }),
    ],
  },
  'rtx3080-windows-wddm-v12.xml': {
    gpus: [
      whole({
        index: 0,
        uuid: 'GPU-19d6d965-2acc-f646-00f8-4c76979aabb4',
        model: 'NVIDIA GeForce RTX 3080',
        memoryMb: 10240,
        driverVersion: '536.40',
        cudaVersion: '12.2',
        pciBusId: '00000000:04:00.0',
      }),
    ],
  },
  'rtx3090-v13.xml': {
    gpus: [
      whole({
        index: 0,
        uuid: 'GPU-12345678-aaaa-bbbb-cccc-0123456789ab',
        model: 'NVIDIA GeForce RTX 3090',
        memoryMb: 24576,
        driverVersion: '590.44.01',
        cudaVersion: '13.1',
        pciBusId: '00000000:09:00.0',
      }),
    ],
  },
  'rtx4090-v12.xml': {
    gpus: [
      whole({
        index: 0,
        uuid: 'GPU-71d1acc2-662d-2166-bf9f-65272d2fc437',
        model: 'NVIDIA GeForce RTX 4090',
        memoryMb: 24564,
        driverVersion: '535.86.05',
        cudaVersion: '12.2',
        pciBusId: '00000000:84:00.0',
      }),
    ],
  },
  'tesla-k80-x4-azure-v10.xml': {
    // minor_number runs 1, 2, 3, 0 in the file; index is the file's order. cuda_version is "Not Found".
    gpus: [
      ['GPU-c3b26f7a-8dcb-619c-fa1b-8029265a4db0', '00001580:00:00.0'],
      ['GPU-b01b80eb-0f18-1df0-cf88-0725bd90f1e1', '00002DF7:00:00.0'],
      ['GPU-30bc2701-3bc2-5f35-0ebd-9867a077e138', '00004968:00:00.0'],
      ['GPU-3341aba2-f01d-2c1f-7dd4-e389779faec2', '0000F8D6:00:00.0'],
    ].map(([uuid, pciBusId], index) =>
      whole({ index, uuid: uuid!, model: 'Tesla K80', memoryMb: 11441, driverVersion: '430.26', cudaVersion: null, pciBusId: pciBusId! }),
    ),
  },
  'tesla-p100-pcie-16gb-v11.xml': {
    gpus: [
      whole({
        index: 0,
        uuid: 'GPU-d3da8716-eaab-75db-efc1-60e88e1cd55e',
        model: 'Tesla P100-PCIE-16GB',
        memoryMb: 16384,
        driverVersion: '510.47.03',
        cudaVersion: '11.6',
        pciBusId: '00000000:00:04.0',
      }),
    ],
  },
  'tesla-t4-v11.xml': {
    gpus: [
      whole({
        index: 0,
        uuid: 'GPU-d37e67a5-91dd-3774-a5cb-99096249601a',
        model: 'Tesla T4',
        memoryMb: 15360,
        driverVersion: '515.105.01',
        cudaVersion: '11.7',
        pciBusId: '00000000:00:1E.0',
      }),
    ],
  },
  'tesla-v100-pcie-32gb-v11.xml': {
    gpus: [
      whole({
        index: 0,
        uuid: 'GPU-e77ce5d8-8b63-c936-3c1b-839d45bcd0f2',
        model: 'Tesla V100-PCIE-32GB',
        memoryMb: 32510,
        driverVersion: '460.39',
        cudaVersion: '11.2',
        pciBusId: '00000000:21:01.0',
      }),
    ],
  },
};

let fake: FakeNvidiaSmi | undefined;
afterEach(async () => {
  await fake?.cleanup();
  fake = undefined;
});

describe('every XML fixture through node-nvidia-smi', () => {
  it('has an expectation for each XML file in test/fixtures/nvidia-smi', async () => {
    const xmlFiles = (await readdir(fixturesDir)).filter((f) => f.endsWith('.xml')).sort();
    expect(Object.keys(expected).sort()).toEqual(xmlFiles);
  });

  for (const [file, want] of Object.entries(expected)) {
    it(`${file}: ${want.gpus.length} GPU unit(s)`, async () => {
      fake = await createFakeNvidiaSmi({ xml: file });
      const got = await detectNvidiaGpus({ path: fake.path, timeoutMs: 10_000 });
      expect(got.gpus).toEqual(want.gpus);
      expect(got.warnings).toEqual(want.warnings ?? []);
      const calls = await fake.calls();
      // -L only where there are MIG devices to name.
      expect(calls).toEqual(want.gpus.some((g) => g.mig) ? [['-q', '-x'], ['-L']] : [['-q', '-x']]);
    });
  }
});
