// The --query-gpu CSV parser and the -L parser, on real captured output: the CSV fixture
// and the query-gpu / -L sections of the capture files (extracted at test time). Expected
// values are read off those files.
import { afterEach, describe, expect, it } from 'vitest';
import {
  inventoryFromQueryGpu,
  metricsFromQueryGpu,
  parseNvidiaSmiList,
  parseQueryGpuCsv,
  sampleNvidiaMetrics,
} from '../../../provider-agent/hardware/nvidia.ts';
import { sampleMetrics } from '../../../provider-agent/hardware/index.ts';
import { MetricsSample } from '../../../shared/hardware.ts';
import { captureSection, createFakeNvidiaSmi, type FakeNvidiaSmi, readFixture } from '../../support/fake-nvidia-smi.ts';

const zeroUuid = 'GPU-00000000-0000-0000-0000-000000000000'; // the capture tool masks UUIDs

describe('parseQueryGpuCsv on csv-query-tesla-p100.csv (format=csv,nounits: header with units, values without)', () => {
  it('reads the header names, drops their units, and maps [N/A] to null', async () => {
    const csv = parseQueryGpuCsv(await readFixture('csv-query-tesla-p100.csv'));
    expect(csv.fields).toEqual([
      'name',
      'uuid',
      'fan.speed',
      'pstate',
      'memory.reserved',
      'memory.used',
      'memory.free',
      'utilization.gpu',
      'utilization.memory',
      'temperature.gpu',
      'power.draw',
      'clocks.current.graphics',
      'clocks.current.sm',
      'clocks.current.memory',
      'clocks.current.video',
    ]);
    expect(csv.ignored).toEqual([]);
    expect(csv.rows).toEqual([
      {
        name: 'Tesla P100-PCIE-16GB',
        uuid: 'GPU-ef1b2c9b-38d8-2090-2bd1-f567a3eb42a6',
        'fan.speed': null,
        pstate: 'P0',
        'memory.reserved': '103',
        'memory.used': '0',
        'memory.free': '16280',
        'utilization.gpu': '0',
        'utilization.memory': '0',
        'temperature.gpu': '37',
        'power.draw': '28.16',
        'clocks.current.graphics': '405',
        'clocks.current.sm': '405',
        'clocks.current.memory': '715',
        'clocks.current.video': '835',
      },
    ]);
    expect(metricsFromQueryGpu(csv)).toEqual({
      gpus: [{ id: 'GPU-ef1b2c9b-38d8-2090-2bd1-f567a3eb42a6', utilizationPct: 0, memoryUsedMb: 0, temperatureC: 37, powerW: 28.16 }],
      warnings: [],
    });
  });
});

// Each capture has an idle and a load section of the full 212-field query (format=csv: header and values with units).
const captures = [
  {
    file: 'capture-h100-80gb-hbm3-590.48.01.txt',
    model: 'NVIDIA H100 80GB HBM3',
    pciBusId: '00000000:00:09.0',
    memoryTotal: '81559',
    idle: { utilizationPct: 0, memoryUsedMb: 0, temperatureC: 41, powerW: 69.85 },
    load: { utilizationPct: 100, memoryUsedMb: 19818, temperatureC: 59, powerW: 631.95 },
  },
  {
    file: 'capture-h200-590.48.01.txt',
    model: 'NVIDIA H200',
    pciBusId: '00000000:83:00.0',
    memoryTotal: '143771',
    idle: { utilizationPct: 0, memoryUsedMb: 0, temperatureC: 28, powerW: 77.71 },
    load: { utilizationPct: 100, memoryUsedMb: 32362, temperatureC: 52, powerW: 627.4 },
  },
];

describe('parseQueryGpuCsv on the capture files', () => {
  for (const c of captures) {
    for (const phase of ['idle', 'load'] as const) {
      it(`${c.file} ${phase}: 212 columns, units stripped, placeholders null`, async () => {
        const csv = parseQueryGpuCsv(await captureSection(c.file, `${phase} :: query-gpu (csv`));
        expect(csv.fields).toHaveLength(212);
        expect(csv.ignored).toEqual([]);
        expect(csv.rows).toHaveLength(1);
        const row = csv.rows[0]!;
        expect(row).toMatchObject({
          index: '0',
          count: '1',
          name: c.model,
          uuid: zeroUuid,
          driver_version: '590.48.01',
          'pci.bus_id': c.pciBusId,
          'memory.total': c.memoryTotal,
          'mig.mode.current': 'Disabled',
          pstate: 'P0',
          // "0 us" in the file
          'clocks_event_reasons_counters.sw_power_cap': '0',
          // "[N/A]" and "[Requested functionality has been deprecated]" in the file
          'vgpu_driver_capability.heterogenous_multivGPU': null,
          display_mode: null,
        });
        expect(metricsFromQueryGpu(csv).gpus).toEqual([{ id: zeroUuid, ...c[phase] }]);
      });
    }

    it(`${c.file}: the same rows without the header (noheader), read with the fields of the command line`, async () => {
      const section = await captureSection(c.file, 'idle :: query-gpu (csv');
      const command = (await readFixture(c.file)).split('\n').find((l) => l.startsWith('# $ nvidia-smi --query-gpu=timestamp'))!;
      const fields = /--query-gpu=(\S+)/.exec(command)![1]!.split(',');
      const withHeader = parseQueryGpuCsv(section);
      const noHeader = parseQueryGpuCsv(section.split('\n').slice(1).join('\n'), fields);
      expect(noHeader.fields).toEqual(fields);
      expect(noHeader.rows).toEqual(withHeader.rows);
    });

    it(`${c.file}: a fallback inventory from the CSV (no CUDA version in it)`, async () => {
      const csv = parseQueryGpuCsv(await captureSection(c.file, 'idle :: query-gpu (csv'));
      expect(inventoryFromQueryGpu(csv)).toEqual({
        gpus: [
          {
            id: zeroUuid,
            index: 0,
            uuid: zeroUuid,
            model: c.model,
            memoryMb: Number(c.memoryTotal),
            driverVersion: '590.48.01',
            cudaVersion: null,
            pciBusId: c.pciBusId,
            mig: null,
          },
        ],
        warnings: [],
      });
    });
  }

  it('a line that is not a row (a driver warning beside the table) is set aside, not parsed', async () => {
    const section = await captureSection('capture-h100-80gb-hbm3-590.48.01.txt', 'idle :: query-gpu (csv');
    const warning = 'WARNING: infoROM is corrupted at gpu 0000:00:09.0';
    for (const text of [`${warning}\n${section}`, section.replace('\n', `\n${warning}\n`)]) {
      const csv = parseQueryGpuCsv(text);
      expect(csv.rows).toHaveLength(1);
      expect(csv.rows[0]!['power.draw']).toBe('69.85');
      expect(csv.ignored).toEqual([warning]);
    }
  });
});

describe('parseNvidiaSmiList', () => {
  for (const c of captures) {
    it(`${c.file}: the -L section`, async () => {
      const list = parseNvidiaSmiList(await captureSection(c.file, 'capabilities :: list (-L)'));
      expect(list).toEqual({ gpus: [{ index: 0, model: c.model, uuid: zeroUuid }], migDevices: [] });
    });
  }

  it('MIG lines belong to the GPU line above them', () => {
    // There is no -L capture with MIG in the fixtures. This is the documented line shape
    // ("  MIG <profile>  Device  <n>: (UUID: MIG-…)", as in NVIDIA/go-nvml#57 and
    // influxdata/telegraf#5812), with masked UUIDs, not a captured output.
    const text = [
      'GPU 0: NVIDIA A100-SXM4-80GB (UUID: GPU-00000000-0000-0000-0000-00000000000a)',
      '  MIG 1g.20gb     Device  0: (UUID: MIG-00000000-0000-0000-0000-0000000000a0)',
      '  MIG 1g.20gb     Device  1: (UUID: MIG-00000000-0000-0000-0000-0000000000a1)',
      'GPU 1: NVIDIA A100-SXM4-80GB (UUID: GPU-00000000-0000-0000-0000-00000000000b)',
      '',
    ].join('\n');
    expect(parseNvidiaSmiList(text)).toEqual({
      gpus: [
        { index: 0, model: 'NVIDIA A100-SXM4-80GB', uuid: 'GPU-00000000-0000-0000-0000-00000000000a' },
        { index: 1, model: 'NVIDIA A100-SXM4-80GB', uuid: 'GPU-00000000-0000-0000-0000-00000000000b' },
      ],
      migDevices: [
        { parentUuid: 'GPU-00000000-0000-0000-0000-00000000000a', migIndex: 0, uuid: 'MIG-00000000-0000-0000-0000-0000000000a0' },
        { parentUuid: 'GPU-00000000-0000-0000-0000-00000000000a', migIndex: 1, uuid: 'MIG-00000000-0000-0000-0000-0000000000a1' },
      ],
    });
  });
});

describe('metrics from a fake nvidia-smi answering --query-gpu=… --format=csv,noheader,nounits', () => {
  let fake: FakeNvidiaSmi | undefined;
  afterEach(async () => {
    await fake?.cleanup();
    fake = undefined;
  });

  it('rtx-a5000-x2-v13.xml: one call, both GPUs (power from <average_power_draw>)', async () => {
    fake = await createFakeNvidiaSmi({ xml: 'rtx-a5000-x2-v13.xml' });
    expect(await sampleNvidiaMetrics({ path: fake.path })).toEqual({
      gpus: [
        { id: 'GPU-12345678-aaaa-bbbb-cccc-0123456789ab', utilizationPct: 0, memoryUsedMb: 22437, temperatureC: 13, powerW: 6.41 },
        { id: 'GPU-12345678-aaaa-bbbb-cccc-0123456789cd', utilizationPct: 0, memoryUsedMb: 17253, temperatureC: 15, powerW: 13.6 },
      ],
      warnings: [],
    });
    const calls = await fake.calls();
    expect(calls).toHaveLength(1);
    expect(calls[0]![1]).toBe('--format=csv,noheader,nounits');
  });

  it('a100-sxm4-40gb-mig-v11.xml: utilization is [N/A] under MIG', async () => {
    fake = await createFakeNvidiaSmi({ xml: 'a100-sxm4-40gb-mig-v11.xml' });
    expect((await sampleNvidiaMetrics({ path: fake.path })).gpus).toEqual([
      { id: 'GPU-27b94a00-ed54-5c24-b1fd-1054085de32a', utilizationPct: null, memoryUsedMb: 38, temperatureC: 36, powerW: 66.92 },
    ]);
  });

  it('grid-p4-1q-vgpu-windows-v11.xml: power N/A is null, a 0 C reading stays 0', async () => {
    fake = await createFakeNvidiaSmi({ xml: 'grid-p4-1q-vgpu-windows-v11.xml' });
    expect((await sampleNvidiaMetrics({ path: fake.path })).gpus).toEqual([
      { id: 'GPU-1b1ea7c7-1c4b-ed49-1c72-26c65f2dd207', utilizationPct: 0, memoryUsedMb: 807, temperatureC: 0, powerW: null },
    ]);
  });

  it('tesla-k80-x4-azure-v10.xml: a driver without mig.mode.current gets the query again without it', async () => {
    fake = await createFakeNvidiaSmi({ xml: 'tesla-k80-x4-azure-v10.xml' });
    const got = await sampleNvidiaMetrics({ path: fake.path });
    expect(got.gpus.map((g) => [g.id, g.utilizationPct, g.memoryUsedMb, g.temperatureC, g.powerW])).toEqual([
      ['GPU-c3b26f7a-8dcb-619c-fa1b-8029265a4db0', 99, 587, 64, 135.72],
      ['GPU-b01b80eb-0f18-1df0-cf88-0725bd90f1e1', 99, 587, 69, 139.71],
      ['GPU-30bc2701-3bc2-5f35-0ebd-9867a077e138', 0, 0, 28, 32.27],
      ['GPU-3341aba2-f01d-2c1f-7dd4-e389779faec2', 0, 0, 26, 34.44],
    ]);
    const queries = (await fake.calls()).map((c) => c[0]!);
    expect(queries).toHaveLength(2);
    expect(queries[0]).toContain('mig.mode.current');
    expect(queries[1]).not.toContain('mig.mode.current');
  });

  it('csv-query-tesla-p100.csv served as captured (header and all): the header is read though noheader was asked', async () => {
    fake = await createFakeNvidiaSmi({ csv: 'csv-query-tesla-p100.csv' });
    const sample = await sampleMetrics({ env: { PATH: fake.path }, now: () => new Date('2026-01-02T03:04:05.000Z') });
    expect(MetricsSample.parse(sample)).toEqual(sample);
    expect(sample.at).toBe('2026-01-02T03:04:05.000Z');
    expect(sample.gpus).toEqual([
      { id: 'GPU-ef1b2c9b-38d8-2090-2bd1-f567a3eb42a6', utilizationPct: 0, memoryUsedMb: 0, temperatureC: 37, powerW: 28.16 },
    ]);
    expect(sample.host.loadAvg1).toBeGreaterThanOrEqual(0);
    expect(sample.host.memoryUsedMb).toBeGreaterThan(0);
  });
});
