// The agent without Docker: with --unsafe-process-runtime it runs jobs as plain processes and
// says loudly that they are not isolated; with neither, join and run say it cannot run jobs.
// Needs no engine: DOCKER_HOST points at a socket that does not exist.
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ApiClient } from '../../shared/client.ts';
import type { Job } from '../../shared/jobs.ts';
import type { DryRun } from '../../shared/pool.ts';
import { spawnAgent, startLocalCoordinator, type AgentProcess, type LocalCoordinator } from '../support/agent-process.ts';
import { until } from '../support/until.ts';


describe('gantry-agent without Docker', () => {
  let c: LocalCoordinator;
  let work: string;
  let provider: ApiClient;
  let client: ApiClient;
  let clientKey: string;
  const agents: AgentProcess[] = [];
  const noDocker = { GANTRY_AGENT_STATE_DIR: '', DOCKER_HOST: 'unix:///nonexistent/gantry-test-docker.sock', GANTRY_AGENT_STOP_GRACE_SECONDS: '1' };

  beforeAll(async () => {
    c = await startLocalCoordinator('pglite', {});
    work = await mkdtemp(path.join(tmpdir(), 'gantry-process-e2e-'));
    const p = await c.admin.post<{ id: string }>('/v1/accounts', { name: 'process-provider', kind: 'provider' });
    provider = new ApiClient({ baseUrl: c.url, token: (await c.admin.post<{ key: string }>(`/v1/accounts/${p.id}/keys`, { scopes: ['provider'] })).key });
    const a = await c.admin.post<{ id: string }>('/v1/accounts', { name: 'process-client', kind: 'client' });
    clientKey = (await c.admin.post<{ key: string }>(`/v1/accounts/${a.id}/keys`, { scopes: ['client'] })).key;
    client = new ApiClient({ baseUrl: c.url, token: clientKey });
  });
  afterAll(async () => {
    for (const a of agents) await a.kill();
    await c?.close();
    if (work) await rm(work, { recursive: true, force: true });
  });

  const join = async (name: string, extra: string[]) => {
    const { token } = await provider.post<{ token: string }>('/v1/enrollment-tokens', {});
    const agent = spawnAgent(['join', '--coordinator', c.url, '--token', token, '--state-dir', path.join(work, name), '--run', '--heartbeat-seconds', '1', ...extra], noDocker);
    agents.push(agent);
    const line = await agent.waitForLine(/as node (node_\w+)/, 60_000);
    return { agent, nodeId: /as node (node_\w+)/.exec(line)![1]! };
  };

  it('says at join and at run that it cannot run jobs, stays online, and is given none', async () => {
    const { agent, nodeId } = await join('no-runtime', []);
    await agent.waitForLine(/no Docker engine here, so this node cannot run jobs: install Docker .* or pass --unsafe-process-runtime/);
    await agent.waitForLine(/this agent cannot run jobs: no Docker engine answers .*; until then this node takes no jobs/);
    await agent.waitForLine(/connected to the coordinator/);
    const spec = { name: 'nowhere', image: 'busybox:latest', command: ['true'], resources: { cpu: 0.5, memoryMb: 64 }, constraints: { nodeId } };
    const dry = await client.post<DryRun>('/v1/jobs/dry-run', spec);
    expect(dry.fits).toBe(false);
    expect(dry.ruledOut.map((r) => r.constraint)).toContain('no_runtime');
    // Submitted anyway, it waits with its reason instead of being leased to a node that cannot run it.
    const job = await client.post<Job>('/v1/jobs', spec);
    await until('the job to get its reason', async () => (await client.get<Job>(`/v1/jobs/${job.id}`)).pendingReason);
    // That nothing happens can only be watched for a while: past the scheduler's 2 s node
    // snapshot, after which a waiting job gets another pass on fresh figures.
    for (const end = Date.now() + 4_000; Date.now() < end; await new Promise((r) => setTimeout(r, 250))) {
      expect(await client.get<Job>(`/v1/jobs/${job.id}`)).toMatchObject({ status: 'queued', attempts: 0, nodeId: null });
    }
    await client.post(`/v1/jobs/${job.id}/cancel`);
  });

  it('with --unsafe-process-runtime warns loudly and runs a job as a process, with the same reporting', async () => {
    const { agent, nodeId } = await join('process', ['--unsafe-process-runtime']);
    await agent.waitForLine(/WARNING: --unsafe-process-runtime: jobs run as plain processes .* NOT isolated/);
    await agent.waitForLine(/connected to the coordinator/);
    const job = await client.post<Job>('/v1/jobs', {
      name: 'process',
      image: 'unused-by-the-process-runtime',
      command: ['sh', '-c', 'echo out; echo err >&2; echo \'{"a": 1}\' > "$GANTRY_OUTPUTS/result.json"; exit 2'],
      resources: { cpu: 0.5, memoryMb: 64 },
      maxAttempts: 1,
      constraints: { nodeId },
    });
    const end = await until('the job to end', async () => {
      const j = await client.get<Job>(`/v1/jobs/${job.id}`);
      return ['succeeded', 'failed', 'cancelled'].includes(j.status) ? j : null;
    });
    expect(end).toMatchObject({ status: 'failed', exitCode: 2, result: { a: 1 } });
    const page = await client.get<{ items: { stream: string; text: string }[] }>(`/v1/jobs/${job.id}/logs`);
    expect(page.items.filter((i) => i.stream === 'stdout').map((i) => i.text).join('')).toBe('out\n');
    expect(page.items.filter((i) => i.stream === 'stderr').map((i) => i.text).join('')).toBe('err\n');
  });

  it('runs a job array: each task knows its index from the lease it verified and gets its own input', async () => {
    const { agent, nodeId } = await join('array', ['--unsafe-process-runtime']);
    await agent.waitForLine(/connected to the coordinator/);
    const digests: string[] = [];
    for (let i = 0; i < 3; i++) {
      const res = await fetch(new URL('/v1/blobs', c.url), { method: 'POST', body: new TextEncoder().encode(`input ${i}`), headers: { authorization: `Bearer ${clientKey}`, 'content-type': 'application/octet-stream' } });
      digests.push(((await res.json()) as { digest: string }).digest);
    }
    const array = await client.post<Job>('/v1/jobs', {
      name: 'array',
      image: 'unused-by-the-process-runtime',
      command: ['sh', '-c', 'printf \'{"index": %s, "count": %s, "input": "%s"}\' "$GANTRY_TASK_INDEX" "$GANTRY_TASK_COUNT" "$(cat "$GANTRY_INPUTS/in.txt")" > "$GANTRY_OUTPUTS/result.json"'],
      resources: { cpu: 0.5, memoryMb: 64 },
      maxAttempts: 1,
      constraints: { nodeId },
      inputs: [{ path: 'in.txt', perTask: digests }],
      tasks: { count: 3, maxParallel: 2 },
    });
    const end = await until('the array to end', async () => {
      const j = await client.get<Job>(`/v1/jobs/${array.id}`);
      return ['succeeded', 'failed', 'cancelled'].includes(j.status) ? j : null;
    });
    expect(end).toMatchObject({ status: 'succeeded', tasks: { count: 3, succeeded: 3 } });
    const tasks = await client.get<{ items: Job[] }>(`/v1/jobs/${array.id}/tasks`);
    expect(tasks.items.map((t) => t.result)).toEqual([0, 1, 2].map((index) => ({ index, count: 3, input: `input ${index}` })));
  });
});
