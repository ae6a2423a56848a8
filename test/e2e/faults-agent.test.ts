// Faults on the agent's side, with real processes: the coordinator as its own process on a
// scratch database of the shared PostgreSQL (so that it can be killed and started again on the
// same data), agents as their own processes (the test executor, or Docker where a container is
// the point). Lease TTL 20 s, the agent's long-poll waits its default 30 s.
//   - a job that ends while the coordinator is down is reported once it is back, and succeeds
//     on its first attempt, also when the agent restarted in between (its report kept on disk);
//   - a kept report whose epoch moved on meanwhile is dropped (409), and the job runs again;
//   - a lease handed to a poll that had waited longer than the TTL runs on its first attempt;
//   - a frozen agent's container is stopped at its lease's end by its watchdog.
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import { tmpdir } from 'node:os';
import path from 'node:path';
import Docker from 'dockerode';
import postgres from 'postgres';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ApiClient } from '../../shared/client.ts';
import type { Job, JobEvent } from '../../shared/jobs.ts';
import { spawnAgent, type AgentProcess } from '../support/agent-process.ts';
import { spawnCoordinator, type CoordinatorProcess } from '../support/coordinator-process.ts';
import { postgresAdminUrl, postgresSkipReason } from '../support/database.ts';
import { dockerOptions, dockerTestImage, requireDockerOrSkip } from '../support/docker-env.ts';
import { until } from '../support/until.ts';
import { freePort } from '../support/ports.ts';

const pgSkip = await postgresSkipReason('agent fault tests');
const docker = await requireDockerOrSkip();
const engine = new Docker(dockerOptions(30_000));

const leaseTtlSeconds = 20;

interface RecordLine {
  event: 'start' | 'end';
  jobId: string;
  epoch: number;
  at: number;
}

/** The test executor's record of starts and ends (GANTRY_TEST_RECORD). */
async function records(file: string, jobId: string): Promise<RecordLine[]> {
  const text = await readFile(file, 'utf8').catch(() => '');
  return text
    .split('\n')
    .filter(Boolean)
    .map((l) => JSON.parse(l) as RecordLine)
    .filter((r) => r.jobId === jobId);
}

/** The agent's log lines (`<ISO time> <message> {json}`) that name a job. */
function linesAbout(agent: AgentProcess, jobId: string, message: string): { at: number; line: string }[] {
  return agent.stdout.filter((l) => l.includes(message) && l.includes(jobId)).map((line) => ({ at: Date.parse(line.slice(0, line.indexOf(' '))), line }));
}

describe.skipIf(pgSkip)('agent faults: the coordinator as a process on PostgreSQL, agents as processes', () => {
  let work: string;
  let port = 0;
  let dbName = '';
  let dbUrl = '';
  let sql: ReturnType<typeof postgres>;
  let coordinator: CoordinatorProcess;
  let url = '';
  let client: ApiClient;
  let provider: ApiClient;
  const agents: AgentProcess[] = [];
  const nodeIds: string[] = [];

  const coordinatorEnv = () => ({
    DATABASE_URL: dbUrl,
    PORT: String(port),
    HOST: '127.0.0.1',
    GANTRY_NAME: 'gantry-faults-agent',
    GANTRY_LEASE_TTL_SECONDS: String(leaseTtlSeconds),
    GANTRY_LOG_REQUESTS: 'false',
    GANTRY_SCHEDULER_TICK_MS: '1000',
    GANTRY_SHUTDOWN_GRACE_MS: '1000',
  });

  async function startCoordinator() {
    coordinator = spawnCoordinator(coordinatorEnv());
    return coordinator.ready;
  }

  const testExecutorArgs = ['--test-executor', '--heartbeat-seconds', '0.25'];

  async function join(name: string, runArgs: string[], env: Record<string, string> = {}) {
    const { token } = await provider.post<{ token: string }>('/v1/enrollment-tokens', {});
    const stateDir = path.join(work, name);
    const agent = spawnAgent(['join', '--coordinator', url, '--token', token, '--state-dir', stateDir, '--name', name, '--run', ...runArgs], {
      GANTRY_AGENT_STATE_DIR: '',
      ...env,
    });
    agents.push(agent);
    const nodeId = /as node (node_\w+)/.exec(await agent.waitForLine(/as node (node_\w+)/, 60_000))![1]!;
    nodeIds.push(nodeId);
    await agent.waitForLine(/connected to the coordinator/, 60_000);
    return { agent, nodeId, stateDir };
  }

  const job = (id: string) => client.get<Job>(`/v1/jobs/${id}`);
  const events = async (id: string) => (await client.get<{ items: JobEvent[] }>(`/v1/jobs/${id}/events`)).items;
  const ended = (id: string, timeoutMs = 90_000) =>
    until(
      `job ${id} to end`,
      async () => {
        const j = await job(id).catch(() => null);
        return j && ['succeeded', 'failed', 'cancelled'].includes(j.status) ? j : null;
      },
      timeoutMs,
    );
  const submit = (nodeId: string, env: Record<string, string>, over: Record<string, unknown> = {}) =>
    client.post<Job>('/v1/jobs', {
      name: 'faults-agent',
      image: dockerTestImage,
      command: ['true'],
      env,
      resources: { cpu: 0.25, memoryMb: 64 },
      constraints: { nodeId },
      maxAttempts: 3,
      ...over,
    });

  beforeAll(async () => {
    work = await mkdtemp(path.join(tmpdir(), 'gantry-faults-agent-'));
    port = await freePort();
    dbName = `gantry_test_${randomBytes(6).toString('hex')}`;
    const admin = postgres(postgresAdminUrl, { max: 1, onnotice: () => {} });
    await admin.unsafe(`create database ${dbName}`);
    await admin.end({ timeout: 5 });
    dbUrl = postgresAdminUrl.replace(/\/[^/]*$/, `/${dbName}`);
    sql = postgres(dbUrl, { max: 1, onnotice: () => {} });
    const ready = await startCoordinator();
    url = ready.url;
    const adminClient = new ApiClient({ baseUrl: url, token: ready.adminKey! });
    const mk = async (kind: 'client' | 'provider') => {
      const acct = await adminClient.post<{ id: string }>('/v1/accounts', { name: `faults-${kind}`, kind });
      const { key } = await adminClient.post<{ key: string }>(`/v1/accounts/${acct.id}/keys`, { scopes: [kind] });
      return new ApiClient({ baseUrl: url, token: key });
    };
    client = await mk('client');
    provider = await mk('provider');
  }, 120_000);

  afterAll(async () => {
    for (const a of agents) await a.kill();
    for (const nodeId of nodeIds) {
      for (const ct of await engine.listContainers({ all: true, filters: { label: [`io.gantry.node=${nodeId}`] } }).catch(() => [])) {
        await engine.getContainer(ct.Id).remove({ force: true }).catch(() => {});
      }
    }
    await coordinator?.stop();
    await sql?.end({ timeout: 5 });
    if (dbName) {
      const admin = postgres(postgresAdminUrl, { max: 1, onnotice: () => {} });
      await admin.unsafe(`drop database if exists ${dbName} with (force)`);
      await admin.end({ timeout: 5 });
    }
    if (work) await rm(work, { recursive: true, force: true });
  });

  it('a job that ends while the coordinator is down, past its lease, is reported when it is back and succeeds on its first attempt', async () => {
    const { agent, nodeId } = await join('outage', testExecutorArgs);
    const record = path.join(work, 'outage.record');
    // Its start takes 3 s (an image pull, say): the coordinator is gone before `running` reaches it.
    const submitted = await submit(nodeId, { GANTRY_TEST_START_MS: '3000', GANTRY_TEST_SLEEP_MS: '500', GANTRY_TEST_RECORD: record });
    await until('the lease to reach the agent', () => linesAbout(agent, submitted.id, 'lease accepted').length > 0);
    coordinator.child.kill('SIGKILL');
    await coordinator.exited;

    await until('the job to end on the agent', async () => (await records(record, submitted.id)).some((r) => r.event === 'end'), 30_000);
    // The coordinator stays away until the lease it last granted has run out.
    const [row] = await sql<{ lease_expires_at: Date }[]>`select lease_expires_at from jobs where id = ${submitted.id}`;
    const expiresAt = row!.lease_expires_at.getTime();
    await until('the lease to run out', () => Date.now() > expiresAt + 1000, (leaseTtlSeconds + 10) * 1000);

    await startCoordinator();
    const end = await ended(submitted.id);
    expect(end).toMatchObject({ status: 'succeeded', attempts: 1, leaseEpoch: submitted.leaseEpoch + 2, exitCode: 0 });
    expect((await records(record, submitted.id)).map((r) => r.event)).toEqual(['start', 'end']);
    expect(linesAbout(agent, submitted.id, 'job reported')).toHaveLength(1);
    expect((await events(submitted.id)).map((e) => e.to)).toEqual(['queued', 'leased', 'running', 'succeeded']);
  }, 150_000);

  it('a report kept on disk is delivered by the restarted agent: the job is reported once and not run again', async () => {
    const { agent, nodeId, stateDir } = await join('restart', testExecutorArgs);
    const record = path.join(work, 'restart.record');
    const submitted = await submit(nodeId, { GANTRY_TEST_SLEEP_MS: '2000', GANTRY_TEST_RECORD: record });
    await until('the job to run', async () => (await job(submitted.id)).status === 'running');
    coordinator.child.kill('SIGKILL');
    await coordinator.exited;

    // The run ends with the coordinator away; then the agent itself goes, hard.
    await agent.waitForLine(new RegExp(`job ended; its report is kept until the coordinator takes it.*${submitted.id}`), 30_000);
    await agent.kill('SIGKILL');
    const again = spawnAgent(['run', '--state-dir', stateDir, ...testExecutorArgs], { GANTRY_AGENT_STATE_DIR: '' });
    agents.push(again);
    await again.waitForLine(new RegExp(`delivering a report kept from before.*${submitted.id}`), 60_000);

    await startCoordinator();
    const end = await ended(submitted.id);
    expect(end).toMatchObject({ status: 'succeeded', attempts: 1, exitCode: 0 });
    expect((await records(record, submitted.id)).map((r) => r.event)).toEqual(['start', 'end']);
    expect(linesAbout(agent, submitted.id, 'job reported')).toHaveLength(0);
    await until('the restarted agent to log the report taken', () => linesAbout(again, submitted.id, 'job reported').length === 1);
    expect((await events(submitted.id)).map((e) => e.to)).toEqual(['queued', 'leased', 'running', 'succeeded']);
    // Nothing is left to deliver: the file is gone once the coordinator took it.
    await until('the kept report to be removed', async () => (await readdir(path.join(stateDir, 'reports'))).length === 0);
  }, 150_000);

  it('a kept report whose epoch moved on while the agent was away is dropped, and the job runs again under its new lease', async () => {
    const { agent, nodeId, stateDir } = await join('stale', testExecutorArgs);
    const record = path.join(work, 'stale.record');
    const submitted = await submit(nodeId, { GANTRY_TEST_SLEEP_MS: '1500', GANTRY_TEST_RECORD: record });
    const running = await until('the job to run', async () => {
      const j = await job(submitted.id);
      return j.status === 'running' ? j : null;
    });
    coordinator.child.kill('SIGKILL');
    await coordinator.exited;
    await agent.waitForLine(new RegExp(`job ended; its report is kept until the coordinator takes it.*${submitted.id}`), 30_000);
    await agent.kill('SIGKILL');

    // Nobody renews the lease now: the coordinator, back, takes it back after its grace.
    await startCoordinator();
    await until('the lease to be taken back', async () => (await job(submitted.id)).leaseEpoch > running.leaseEpoch, (3 * leaseTtlSeconds + 10) * 1000);
    const again = spawnAgent(['run', '--state-dir', stateDir, ...testExecutorArgs], { GANTRY_AGENT_STATE_DIR: '' });
    agents.push(again);
    await again.waitForLine(new RegExp(`report dropped: the job is no longer held at this epoch.*${submitted.id}`), 60_000);
    const end = await ended(submitted.id);
    expect(end).toMatchObject({ status: 'succeeded', attempts: 2 });
    expect((await records(record, submitted.id)).map((r) => `${r.event} ${r.epoch}`)).toEqual([
      `start ${running.leaseEpoch}`,
      `end ${running.leaseEpoch}`,
      `start ${end.leaseEpoch - 1}`,
      `end ${end.leaseEpoch - 1}`,
    ]);
    expect(await readdir(path.join(stateDir, 'reports'))).toEqual([]);
  }, 180_000);

  it(`a lease handed to a poll that had waited longer than the TTL (${leaseTtlSeconds} s, poll 30 s) runs on its first attempt`, async () => {
    const { agent, nodeId } = await join('idle', testExecutorArgs);
    const record = path.join(work, 'idle.record');
    const first = await submit(nodeId, { GANTRY_TEST_RECORD: record });
    expect(await ended(first.id)).toMatchObject({ status: 'succeeded', attempts: 1 });
    // The agent polls again as soon as a poll brings a lease: the poll now waiting left before
    // the first lease was accepted, and has brought nothing since (an idle node).
    const [accepted] = linesAbout(agent, first.id, 'lease accepted');
    expect(accepted).toBeDefined();
    await until('the waiting poll to be older than a lease TTL', () => Date.now() > accepted!.at + (leaseTtlSeconds + 1) * 1000, (leaseTtlSeconds + 5) * 1000);

    const second = await submit(nodeId, { GANTRY_TEST_SLEEP_MS: '1000', GANTRY_TEST_RECORD: record });
    const end = await ended(second.id);
    expect(end).toMatchObject({ status: 'succeeded', attempts: 1 });
    expect((await records(record, second.id)).map((r) => r.event)).toEqual(['start', 'end']);
    expect(linesAbout(agent, second.id, 'lease expired without renewal')).toEqual([]);
  }, 150_000);

  describe.skipIf(!docker)('with Docker', () => {
    it('the container of a frozen agent (SIGSTOP past the TTL) is stopped at its lease end by its watchdog', async () => {
      const { agent, nodeId } = await join('frozen', ['--heartbeat-seconds', '1'], { GANTRY_AGENT_STOP_GRACE_SECONDS: '1' });
      const submitted = await submit(nodeId, {}, { command: ['sleep', '600'], maxAttempts: 1 });
      await until('the job to run', async () => (await job(submitted.id)).status === 'running', 60_000);
      const containers = () => engine.listContainers({ all: true, filters: { label: [`io.gantry.job=${submitted.id}`] } });
      await until('its container to run', async () => (await containers())[0]?.State === 'running');

      const frozenAt = Date.now();
      agent.child.kill('SIGSTOP');
      const agentState = async () => (await readFile(`/proc/${agent.child.pid}/stat`, 'utf8')).split(' ')[2];
      try {
        await until('the container to stop', async () => (await containers())[0]?.State !== 'running', (leaseTtlSeconds + 20) * 1000);
        // It stopped while the agent was still frozen, after the lease (renewed at most a heartbeat before the freeze) ran out.
        expect(await agentState()).toBe('T');
        expect(Date.now() - frozenAt).toBeGreaterThanOrEqual((leaseTtlSeconds - 2) * 1000);
      } finally {
        agent.child.kill('SIGCONT');
      }
      // Thawed, the agent reports nothing for the run its lease no longer covers, and clears it away.
      await agent.waitForLine(new RegExp(`job stopped without a report.*${submitted.id}`), 30_000);
      await until('the container to be removed', async () => (await containers()).length === 0, 30_000);
      const end = await ended(submitted.id);
      expect(end.status).toBe('failed');
      expect(end.error).toMatch(/expired/);
    }, 150_000);
  });
});
