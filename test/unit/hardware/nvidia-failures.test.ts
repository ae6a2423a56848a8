// How detection fails: never a crash, always a warning that says why, and GPUs kept
// wherever nvidia-smi still gave good output. The real node-nvidia-smi runs against a fake.
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { detectHardware } from '../../../provider-agent/hardware/index.ts';
import { cpuOnlyWarning, detectNvidiaGpus, sampleNvidiaMetrics } from '../../../provider-agent/hardware/nvidia.ts';
import { HardwareReport } from '../../../shared/hardware.ts';
import { createFakeNvidiaSmi, type FakeNvidiaSmi, type FakeNvidiaSmiOptions, readFixture } from '../../support/fake-nvidia-smi.ts';

const fakes: FakeNvidiaSmi[] = [];
async function fake(opts: FakeNvidiaSmiOptions): Promise<FakeNvidiaSmi> {
  const f = await createFakeNvidiaSmi(opts);
  fakes.push(f);
  return f;
}
afterEach(async () => {
  for (const f of fakes.splice(0)) await f.cleanup();
});

async function eventually(check: () => Promise<boolean>, ms = 3000): Promise<boolean> {
  const until = Date.now() + ms;
  while (Date.now() < until) {
    if (await check()) return true;
    await new Promise((r) => setTimeout(r, 50));
  }
  return check();
}

// A warning nvidia-smi prints beside good output (the text is the driver's usual infoROM warning).
const inforomWarning = 'WARNING: infoROM is corrupted at gpu 0000:81:00.0';
const a5000Uuids = ['GPU-12345678-aaaa-bbbb-cccc-0123456789ab', 'GPU-12345678-aaaa-bbbb-cccc-0123456789cd'];

describe('no nvidia-smi', () => {
  it('is a CPU-only node with a warning that says so', async () => {
    const empty = await mkdtemp(path.join(tmpdir(), 'no-nvidia-smi-'));
    try {
      expect(await detectNvidiaGpus({ path: empty })).toEqual({ gpus: [], warnings: [cpuOnlyWarning] });
      const report = await detectHardware({ env: { PATH: empty, DOCKER_HOST: 'unix:///nonexistent/docker.sock' } });
      expect(HardwareReport.parse(report).gpus).toEqual([]);
      expect(report.warnings).toContain(cpuOnlyWarning);
      expect(await sampleNvidiaMetrics({ path: empty })).toEqual({ gpus: [], warnings: [] });
    } finally {
      await rm(empty, { recursive: true, force: true });
    }
  });
});

describe('nvidia-smi exits non-zero', () => {
  it('gives no GPUs and a warning carrying the driver message from error-no-driver.txt', async () => {
    const f = await fake({ fail: { fixture: 'error-no-driver.txt', exitCode: 9 } });
    const got = await detectNvidiaGpus({ path: f.path, timeoutMs: 10_000 });
    expect(got.gpus).toEqual([]);
    expect(got.warnings).toHaveLength(1);
    expect(got.warnings[0]).toContain('exited with code 9');
    // The one line of error-no-driver.txt, as a person reads it there.
    expect(got.warnings[0]).toContain(
      "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. Make sure that the latest NVIDIA driver is installed and running.",
    );
    expect(await readFixture('error-no-driver.txt')).toContain("couldn't communicate with the NVIDIA driver");
  });

  it('metrics carry the same message', async () => {
    const f = await fake({ fail: { fixture: 'error-no-driver.txt', exitCode: 9 } });
    const got = await sampleNvidiaMetrics({ path: f.path });
    expect(got.gpus).toEqual([]);
    expect(got.warnings[0]).toContain("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.");
  });
});

describe('nvidia-smi hangs', () => {
  it('gives no GPUs within the timeout, shares the one call in flight, and kills it', async () => {
    const f = await fake({ hang: true });
    const started = Date.now();
    const [a, b] = await Promise.all([
      detectNvidiaGpus({ path: f.path, timeoutMs: 500 }),
      detectNvidiaGpus({ path: f.path, timeoutMs: 500 }),
    ]);
    expect(Date.now() - started).toBeLessThan(2000);
    for (const got of [a, b]) {
      expect(got.gpus).toEqual([]);
      expect(got.warnings).toEqual(['nvidia-smi -q -x did not answer within 500 ms: no GPUs advertised']);
    }
    expect(await f.calls()).toEqual([['-q', '-x']]);
    expect(await eventually(async () => (await f.livePids()).length === 0)).toBe(true);
  });

  it('a detection after the timeout starts afresh once the hung one is gone', async () => {
    const hung = await fake({ hang: true });
    await detectNvidiaGpus({ path: hung.path, timeoutMs: 300 });
    expect(await eventually(async () => (await hung.livePids()).length === 0)).toBe(true);
    const good = await fake({ xml: 'rtx-a5000-x2-v13.xml' });
    // The killed call settles a moment after its process dies; from then on -q -x runs again.
    const fresh = await eventually(async () => {
      const got = await detectNvidiaGpus({ path: good.path, timeoutMs: 10_000 });
      return got.warnings.length === 0 && got.gpus.every((g) => g.cudaVersion === '13.1');
    });
    expect(fresh).toBe(true);
    expect(await good.calls()).toContainEqual(['-q', '-x']);
  });

  it('metrics time out too, and the hung query is killed', async () => {
    const f = await fake({ hang: true });
    const started = Date.now();
    const got = await sampleNvidiaMetrics({ path: f.path, timeoutMs: 400 });
    expect(Date.now() - started).toBeLessThan(2000);
    expect(got).toEqual({ gpus: [], warnings: ['nvidia-smi --query-gpu did not answer within 400 ms'] });
    expect(await eventually(async () => (await f.livePids()).length === 0)).toBe(true);
  });
});

describe('one detection at a time', () => {
  it('two detections at once run nvidia-smi -q -x once and get the same answer', async () => {
    const f = await fake({ xml: 'rtx-a5000-x2-v13.xml' });
    const [a, b] = await Promise.all([
      detectNvidiaGpus({ path: f.path, timeoutMs: 10_000 }),
      detectNvidiaGpus({ path: f.path, timeoutMs: 10_000 }),
    ]);
    expect(a).toEqual(b);
    expect(a.gpus.map((g) => g.id)).toEqual(a5000Uuids);
    expect(await f.calls()).toEqual([['-q', '-x']]);
  });
});

describe('output that is not XML', () => {
  it('gives no GPUs and a warning with what nvidia-smi printed', async () => {
    // error-no-driver.txt printed with exit 0 where XML was expected.
    const f = await fake({ xml: 'error-no-driver.txt' });
    const got = await detectNvidiaGpus({ path: f.path, timeoutMs: 10_000 });
    expect(got.gpus).toEqual([]);
    expect(got.warnings[0]).toMatch(/^nvidia-smi -q -x printed output that does not parse as XML/);
    expect(got.warnings.join(' ')).toContain("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.");
  });
});

describe('a warning beside good output keeps the GPUs', () => {
  const fromCsv = (index: number, uuid: string, pciBusId: string) => ({
    id: uuid,
    index,
    uuid,
    model: 'NVIDIA RTX A5000',
    memoryMb: 24564,
    driverVersion: '590.44.01',
    // The CSV query has no CUDA version.
    cudaVersion: null,
    pciBusId,
    mig: null,
  });
  const a5000FromCsv = [fromCsv(0, a5000Uuids[0]!, '00000000:81:00.0'), fromCsv(1, a5000Uuids[1]!, '00000000:C1:00.0')];
  // What the XML of rtx-a5000-x2-v13.xml says, the CUDA version with it.
  const a5000FromXml = a5000FromCsv.map((g) => ({ ...g, cudaVersion: '13.1' }));

  it('on stderr beside complete XML (node-nvidia-smi drops it): the XML is used, CUDA version and all, and the warning kept', async () => {
    const f = await fake({ xml: 'rtx-a5000-x2-v13.xml', stderrWarning: inforomWarning });
    const got = await detectNvidiaGpus({ path: f.path, timeoutMs: 10_000 });
    expect(got.gpus).toEqual(a5000FromXml);
    expect(got.warnings).toEqual([`nvidia-smi -q -x wrote to stderr: ${inforomWarning}`]);
    // No CSV fallback.
    expect((await f.calls()).some((args) => args.some((a) => a.startsWith('--query-gpu')))).toBe(false);
  });

  it('on stderr beside a MIG GPU: its MIG devices are advertised from the XML', async () => {
    const f = await fake({ xml: 'a100-sxm4-40gb-mig-v11.xml', stderrWarning: inforomWarning });
    const got = await detectNvidiaGpus({ path: f.path, timeoutMs: 10_000 });
    expect(got.gpus.map((g) => [g.id, g.mig?.gpuInstanceId])).toEqual([
      ['GPU-27b94a00-ed54-5c24-b1fd-1054085de32a:1:0', 1],
      ['GPU-27b94a00-ed54-5c24-b1fd-1054085de32a:2:0', 2],
    ]);
    expect(got.warnings[0]).toBe(`nvidia-smi -q -x wrote to stderr: ${inforomWarning}`);
  });

  it('on stdout before the XML: the CSV query gives them, and the warning is kept', async () => {
    const f = await fake({ xml: 'rtx-a5000-x2-v13.xml', stdoutWarning: inforomWarning });
    const got = await detectNvidiaGpus({ path: f.path, timeoutMs: 10_000 });
    expect(got.gpus).toEqual(a5000FromCsv);
    expect(got.warnings.join(' ')).toContain(inforomWarning);
  });

  it('output over node-nvidia-smi 1 MiB limit: the CSV query gives them', async () => {
    const f = await fake({ xml: 'rtx-a5000-x2-v13.xml', padXmlBytes: 1100 * 1024 });
    const got = await detectNvidiaGpus({ path: f.path, timeoutMs: 10_000 });
    expect(got.gpus).toEqual(a5000FromCsv);
    expect(got.warnings[0]).toContain('1 MiB');
  });

  it('a MIG-enabled GPU seen only through the CSV query advertises nothing, and says so', async () => {
    const f = await fake({ xml: 'a100-sxm4-40gb-mig-v11.xml', stdoutWarning: inforomWarning });
    const got = await detectNvidiaGpus({ path: f.path, timeoutMs: 10_000 });
    expect(got.gpus).toEqual([]);
    expect(got.warnings.join(' ')).toContain('GPU-27b94a00-ed54-5c24-b1fd-1054085de32a has MIG enabled');
  });
});
