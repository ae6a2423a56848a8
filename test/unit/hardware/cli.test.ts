// `gantry-agent hardware` as a user runs it: the real bin through tsx, nvidia-smi faked on PATH.
import { execFile } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { HardwareReport } from '../../../shared/hardware.ts';
import { createFakeNvidiaSmi, type FakeNvidiaSmi } from '../../support/fake-nvidia-smi.ts';

const bin = fileURLToPath(new URL('../../../bin/gantry-agent.js', import.meta.url));

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

function agent(args: string[], PATH: string): Promise<Run> {
  return new Promise((resolve) => {
    execFile(
      process.execPath,
      [bin, ...args],
      // No engine at this DOCKER_HOST: the answer does not depend on the machine the tests run on.
      { env: { PATH, DOCKER_HOST: 'unix:///nonexistent/docker.sock', HOME: tmpdir() }, timeout: 30_000 },
      (err, stdout, stderr) => resolve({ code: err ? Number(err.code ?? 1) : 0, stdout, stderr }),
    );
  });
}

let fake: FakeNvidiaSmi;
let empty: string;
beforeAll(async () => {
  fake = await createFakeNvidiaSmi({ xml: 'rtx-a5000-x2-v13.xml' });
  empty = await mkdtemp(path.join(tmpdir(), 'no-nvidia-smi-'));
});
afterAll(async () => {
  await fake.cleanup();
  await rm(empty, { recursive: true, force: true });
});

describe('gantry-agent hardware', () => {
  it('--json prints one report the coordinator accepts, and exits 0', async () => {
    const run = await agent(['hardware', '--json'], fake.path);
    expect(run.code).toBe(0);
    expect(run.stderr).toBe('');
    const report = HardwareReport.parse(JSON.parse(run.stdout));
    expect(report.gpus.map((g) => [g.index, g.id, g.model, g.memoryMb])).toEqual([
      [0, 'GPU-12345678-aaaa-bbbb-cccc-0123456789ab', 'NVIDIA RTX A5000', 24564],
      [1, 'GPU-12345678-aaaa-bbbb-cccc-0123456789cd', 'NVIDIA RTX A5000', 24564],
    ]);
    expect(report.host.containerRuntime).toEqual({ kind: 'none' });
  });

  it('without nvidia-smi on PATH: a CPU-only report with the warning, still exit 0', async () => {
    const run = await agent(['hardware', '--json'], empty);
    expect(run.code).toBe(0);
    const report = HardwareReport.parse(JSON.parse(run.stdout));
    expect(report.gpus).toEqual([]);
    expect(report.warnings).toContain('nvidia-smi not found on PATH: this is a CPU-only node');
  });

  it('without --json: a short table', async () => {
    const run = await agent(['hardware'], fake.path);
    expect(run.code).toBe(0);
    expect(run.stdout).toMatch(/^gpus +2$/m);
    expect(run.stdout).toMatch(/^ +1 +GPU-12345678-aaaa-bbbb-cccc-0123456789cd +NVIDIA RTX A5000 +24564 MiB +590\.44\.01 +13\.1 +00000000:C1:00\.0/m);
  });
});

describe('gantry-agent errors: one line on stderr, a non-zero exit, no stack trace', () => {
  const cases: [string[], number, RegExp][] = [
    [['frobnicate'], 2, /^gantry-agent: unknown command "frobnicate"/],
    [['hardware', '--bogus'], 2, /^gantry-agent: Unknown option '--bogus'/],
    [['hardware', '--timeout', 'soon'], 2, /^gantry-agent: --timeout must be a whole number/],
    [['join'], 2, /^gantry-agent: --coordinator: is required/],
    [['run', '--state-dir', '/nonexistent/gantry-agent'], 1, /^gantry-agent: this machine is not enrolled .*: run gantry-agent join first$/],
    [['install-service', '--state-dir', '/nonexistent/gantry-agent'], 1, /^gantry-agent: this machine is not enrolled yet .*: run gantry-agent join first$/],
  ];
  for (const [args, code, message] of cases) {
    it(args.join(' '), async () => {
      const run = await agent(args, empty);
      expect(run.code).toBe(code);
      expect(run.stdout).toBe('');
      expect(run.stderr.trimEnd().split('\n')).toHaveLength(1);
      expect(run.stderr.trimEnd()).toMatch(message);
    });
  }

  it('--help prints the usage and exits 0', async () => {
    const run = await agent(['--help'], empty);
    expect(run.code).toBe(0);
    expect(run.stdout).toContain('Usage: gantry-agent <command>');
  });
});
