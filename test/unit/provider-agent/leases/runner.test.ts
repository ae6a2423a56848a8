import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { LeaseRunner, type LogSink } from '../../../../provider-agent/leases/runner.ts';
import { ReportStore } from '../../../../provider-agent/leases/report-store.ts';
import { TestExecutor } from '../../../../provider-agent/runtime/test-executor.ts';
import { ApiClient } from '../../../../shared/client.ts';
import { newSigningKey, reportAnswer, startStandIn, type StandIn } from '../../../support/agent-api-stand-in.ts';
import { until } from '../../../support/until.ts';

// The lease runner against a loopback stand-in for the coordinator's agent routes, running its
// leases through the test executor: verification, the reports it sends and in what order,
// cancellation by heartbeat, and a finish report retried until the coordinator takes it.

describe('LeaseRunner', () => {
  let api: StandIn;
  let stateDir: string;
  let runner: LeaseRunner;
  let logs: Map<string, string[]>;
  let said: string[];

  beforeEach(async () => {
    api = await startStandIn();
    stateDir = await mkdtemp(path.join(tmpdir(), 'gantry-runner-'));
    logs = new Map();
    said = [];
    const sink = (jobId: string): LogSink => ({
      write: (stream, text) => void logs.set(jobId, [...(logs.get(jobId) ?? []), `${stream}: ${text}`]),
      close: async () => {},
    });
    const note = (level: string) => (msg: string, f?: Record<string, unknown>) => void said.push(`${level} ${msg} ${JSON.stringify(f ?? {})}`);
    runner = new LeaseRunner({
      client: new ApiClient({ baseUrl: api.url, token: 'agent-token' }),
      nodeId: api.nodeId,
      issuer: api.issuer,
      executor: new TestExecutor(),
      log: { info: note('info'), warn: note('warn'), error: note('error') },
      pollWaitSeconds: 1,
      logSink: (grant) => sink(grant.jobId),
      io: () => ({}),
      reports: new ReportStore(path.join(stateDir, 'reports')),
    });
    await runner.start();
  });

  afterEach(async () => {
    await runner.stop();
    await api.close();
    await rm(stateDir, { recursive: true, force: true });
  });

  const callsFor = (jobId: string) =>
    api.requests.filter((r) => r.path.startsWith(`/v1/agent/jobs/${jobId}/`)).map((r) => `${r.method} ${r.path.slice(`/v1/agent/jobs/${jobId}/`.length)}`);
  const finishOf = (jobId: string) => api.requests.find((r) => r.path === `/v1/agent/jobs/${jobId}/finish`)?.body as Record<string, unknown> | undefined;

  it('runs a verified lease and reports it running, then its end, at its epoch', async () => {
    const grant = api.grant({ GANTRY_TEST_OUTCOME: 'fail', GANTRY_TEST_EXIT: '3' });
    api.offer(grant);
    const finish = await until('the finish report', () => finishOf(grant.jobId), 10_000);
    expect(finish).toMatchObject({ epoch: 1, reason: 'nonzero-exit', exitCode: 3 });
    expect(callsFor(grant.jobId)).toEqual(['POST running', 'POST finish']);
    expect(logs.get(grant.jobId)).toEqual(['stdout: test executor: true\n', 'stderr: test executor: exiting 3\n']);
    // Once the coordinator took the report, the heartbeat no longer names the job.
    await until('the lease let go', () => runner.heldJobs().length === 0, 5_000);
  });

  it("takes a job array task's index from the lease token it verified, never from the rest of the answer", async () => {
    const record = path.join(stateDir, 'runs.jsonl');
    const signed = api.grant({ GANTRY_TEST_RECORD: record }, { task: { index: 4, count: 9 } });
    // A coordinator (or whoever stands between) naming a task the token does not.
    const claimed = { ...api.grant({ GANTRY_TEST_RECORD: record }), task: { index: 1, count: 2 } };
    api.offer(signed);
    api.offer(claimed);
    await until('both ends', () => finishOf(signed.jobId) && finishOf(claimed.jobId), 10_000);
    const starts = (await readFile(record, 'utf8')).trim().split('\n').map((l) => JSON.parse(l)).filter((l) => l.event === 'start');
    expect(Object.fromEntries(starts.map((s) => [s.jobId, s.task]))).toEqual({ [signed.jobId]: { index: 4, count: 9 }, [claimed.jobId]: null });
  });

  it('refuses a lease signed by a key the coordinator does not publish, and runs nothing', async () => {
    const grant = api.grant({}, { key: newSigningKey('forged') });
    api.offer(grant);
    const finish = await until('the refusal', () => finishOf(grant.jobId), 10_000);
    expect(finish).toMatchObject({ epoch: 1, reason: 'refused', exitCode: null });
    expect(callsFor(grant.jobId)).toEqual(['POST finish']);
    expect(logs.get(grant.jobId)).toBeUndefined();
  });

  it('stops a running job its heartbeat answer cancels, and reports it cancelled', async () => {
    const grant = api.grant({ GANTRY_TEST_OUTCOME: 'hang' });
    api.offer(grant);
    await until('the running report', () => callsFor(grant.jobId).includes('POST running'), 10_000);
    expect(runner.heldJobs()).toEqual([{ jobId: grant.jobId, epoch: 1 }]);
    runner.onHeartbeatAnswer({ cancel: [{ jobId: grant.jobId, epoch: 1 }] });
    const finish = await until('the finish report', () => finishOf(grant.jobId), 10_000);
    expect(finish).toMatchObject({ epoch: 1, reason: 'cancelled' });
  });

  it('keeps a finish report the coordinator cannot take yet, and delivers it with backoff', async () => {
    let refusals = 2;
    api.on('POST /v1/agent/jobs/:id/finish', (r) => (refusals-- > 0 ? { status: 503 } : reportAnswer(r, 'succeeded')));
    const grant = api.grant();
    api.offer(grant);
    await until('three finish tries', () => callsFor(grant.jobId).filter((c) => c === 'POST finish').length === 3, 10_000);
    const tries = api.requests.filter((r) => r.path === `/v1/agent/jobs/${grant.jobId}/finish`).map((r) => r.at);
    // Waits of at least half of 500 ms, then of 1 s (the shared backoff's jitter keeps the upper half).
    expect(tries[1]! - tries[0]!).toBeGreaterThanOrEqual(240);
    expect(tries[2]! - tries[1]!).toBeGreaterThanOrEqual(490);
    await until('the report removed from the state dir', async () => (await new ReportStore(path.join(stateDir, 'reports')).list()).reports.length === 0, 5_000);
    expect(said.some((l) => l.startsWith('info job reported'))).toBe(true);
  });

  it('stops a job whose lease runs out without renewal, and leaves its end unreported', async () => {
    const grant = api.grant({ GANTRY_TEST_OUTCOME: 'hang' }, { ttlMs: 1500 });
    api.offer(grant);
    await until('the job stopped', () => said.find((l) => l.startsWith('info job stopped without a report')), 10_000);
    expect(said.some((l) => l.includes('lease expired without renewal'))).toBe(true);
    // The coordinator takes the lapsed lease back; a report now could end a run elsewhere.
    expect(callsFor(grant.jobId)).toEqual(['POST running']);
    expect(runner.heldJobs()).toEqual([]);
  });
});
