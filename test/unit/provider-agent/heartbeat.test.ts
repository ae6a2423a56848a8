import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { HeartbeatLoop } from '../../../provider-agent/heartbeat.ts';
import { ApiClient } from '../../../shared/client.ts';
import type { HardwareReport, MetricsSample } from '../../../shared/hardware.ts';
import type { HeartbeatAnswer } from '../../../shared/nodes.ts';
import { startStandIn, type StandIn } from '../../support/agent-api-stand-in.ts';
import { until } from '../../support/until.ts';

// The heartbeat loop against a loopback stand-in for POST /v1/agent/heartbeat: what each beat
// carries, the answers it hands on, and how it backs off and tells a lost coordinator.

const hardware: HardwareReport = {
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
  gpus: [],
  warnings: [],
};
const sample = async (): Promise<MetricsSample> => ({ at: new Date().toISOString(), host: { loadAvg1: 0.5, memoryUsedMb: 1000 }, gpus: [] });

describe('HeartbeatLoop', () => {
  let api: StandIn;
  let loop: HeartbeatLoop | undefined;
  let said: string[];
  const beats = () => api.requests.filter((r) => r.path === '/v1/agent/heartbeat');
  const answer = (extra: Record<string, unknown> = {}) => ({
    status: 200,
    body: { nodeId: api.nodeId, status: 'online', receivedAt: new Date().toISOString(), hardwareWanted: false, warnings: [], ...extra },
  });
  const start = (over: Partial<ConstructorParameters<typeof HeartbeatLoop>[0]> = {}) => {
    loop = new HeartbeatLoop({
      client: new ApiClient({ baseUrl: api.url, token: 'agent-token' }),
      intervalMs: 20,
      detectHardware: async () => hardware,
      sampleMetrics: sample,
      initialHardware: hardware,
      log: (line) => said.push(line),
      // The top of each jittered wait, so the waits can be checked.
      random: () => 0.999_999,
      ...over,
    });
    void loop.start();
    return loop;
  };

  beforeEach(async () => {
    api = await startStandIn();
    said = [];
  });
  afterEach(async () => {
    await loop?.stop();
    loop = undefined;
    await api.close();
  });

  it('carries the held jobs and the hardware once, and hands each answer to the lease runner', async () => {
    const answers: HeartbeatAnswer[] = [];
    api.on('POST /v1/agent/heartbeat', () => answer({ leases: [], draining: false }));
    const l = start({ heldJobs: () => [{ jobId: 'job_held', epoch: 4 }], onAnswer: (a) => void answers.push(a) });
    l.supplyTakesWork(() => false);
    await until('three heartbeats taken', () => l.heartbeatsTaken >= 3, 5_000);
    const [first, second] = beats().map((b) => b.body as Record<string, unknown>);
    expect(first).toMatchObject({ jobs: [{ jobId: 'job_held', epoch: 4 }], takesWork: false, hardware });
    // Taken once, the inventory is not sent again until it changes or is asked for.
    expect(second).not.toHaveProperty('hardware');
    expect(answers[0]).toMatchObject({ nodeId: api.nodeId, leases: [], draining: false });
    expect(l.linkState).toBe('connected');
    expect(said).toEqual([`connected to the coordinator at ${api.url}`]);
  });

  it('backs off while the coordinator is down, says so once, and says when it is back', async () => {
    let failures = 5;
    api.on('POST /v1/agent/heartbeat', () => (failures-- > 0 ? { status: 503 } : answer()));
    const l = start({ maxBackoffMs: 160 });
    await until('reconnected', () => said.find((s) => s.startsWith('reconnected')), 10_000);
    const at = beats().map((b) => b.at);
    // 20 ms doubling to the 160 ms cap: 20, 40, 80, 160, 160 (timers fire a little late, never early).
    const waits = at.slice(1, 6).map((t, i) => t - at[i]!);
    [20, 40, 80, 160, 160].forEach((least, i) => expect(waits[i], `wait ${i + 1}`).toBeGreaterThanOrEqual(least - 2));
    expect(said).toEqual([
      'the coordinator is unreachable (HTTP 503); retrying with backoff',
      expect.stringMatching(/^reconnected to the coordinator after 5 failed tries \(\d+ s\)$/),
    ]);
    expect(l.linkState).toBe('connected');
  });

  it('tells a refusal apart from an outage', async () => {
    api.on('POST /v1/agent/heartbeat', () => ({ status: 401, body: { type: 'about:blank', title: 'Authentication required', status: 401, code: 'unauthenticated', detail: 'the agent token has expired' } }));
    const l = start();
    await until('refused', () => l.linkState === 'refused', 5_000);
    await until('a few more tries', () => beats().length >= 4, 5_000);
    expect(said).toEqual(['the coordinator refused the heartbeat (401: the agent token has expired); retrying with backoff']);
  });
});
