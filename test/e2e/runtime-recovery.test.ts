// After an agent restart, its containers are found by label: one whose lease is still current is
// followed to its end (runtime.test.ts), one whose lease lapsed while the agent was away is
// stopped and removed, and the job runs again under its new lease. Short leases here (15 s, the least the coordinator takes).
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import Docker from 'dockerode';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ApiClient } from '../../shared/client.ts';
import type { Job } from '../../shared/jobs.ts';
import { spawnAgent, startLocalCoordinator, type AgentProcess, type LocalCoordinator } from '../support/agent-process.ts';
import { dockerOptions, dockerTestImage, requireDockerOrSkip } from '../support/docker-env.ts';
import { until } from '../support/until.ts';

const docker = await requireDockerOrSkip();
const engine = new Docker(dockerOptions(30_000));


describe.skipIf(!docker)('containers left behind by an agent whose lease lapsed', () => {
  let c: LocalCoordinator;
  let work: string;
  let client: ApiClient;
  const agents: AgentProcess[] = [];
  let nodeId = '';
  const env = { GANTRY_AGENT_STATE_DIR: '', GANTRY_AGENT_STOP_GRACE_SECONDS: '1' };

  beforeAll(async () => {
    c = await startLocalCoordinator('pglite', { GANTRY_LEASE_TTL_SECONDS: '15', GANTRY_NODE_TTL_SECONDS: '3' });
    work = await mkdtemp(path.join(tmpdir(), 'gantry-recovery-e2e-'));
    const p = await c.admin.post<{ id: string }>('/v1/accounts', { name: 'recovery-provider', kind: 'provider' });
    const provider = new ApiClient({ baseUrl: c.url, token: (await c.admin.post<{ key: string }>(`/v1/accounts/${p.id}/keys`, { scopes: ['provider'] })).key });
    const a = await c.admin.post<{ id: string }>('/v1/accounts', { name: 'recovery-client', kind: 'client' });
    client = new ApiClient({ baseUrl: c.url, token: (await c.admin.post<{ key: string }>(`/v1/accounts/${a.id}/keys`, { scopes: ['client'] })).key });
    const { token } = await provider.post<{ token: string }>('/v1/enrollment-tokens', {});
    const agent = spawnAgent(['join', '--coordinator', c.url, '--token', token, '--state-dir', path.join(work, 'node'), '--run', '--heartbeat-seconds', '1'], env);
    agents.push(agent);
    nodeId = /as node (node_\w+)/.exec(await agent.waitForLine(/as node (node_\w+)/, 60_000))![1]!;
    await agent.waitForLine(/connected to the coordinator/, 60_000);
  }, 120_000);

  afterAll(async () => {
    for (const a of agents) await a.kill();
    for (const ct of await engine.listContainers({ all: true, filters: { label: [`io.gantry.node=${nodeId}`] } }).catch(() => [])) {
      await engine.getContainer(ct.Id).remove({ force: true }).catch(() => {});
    }
    await c?.close();
    if (work) await rm(work, { recursive: true, force: true });
  });

  it('removes the stale container and runs the job again under its new lease', async () => {
    const job = await client.post<Job>('/v1/jobs', {
      name: 'recovery',
      image: dockerTestImage,
      command: ['sh', '-c', 'for i in $(seq 1 50); do echo "tick $i"; sleep 0.2; done; echo finished'],
      resources: { cpu: 0.5, memoryMb: 64 },
      maxAttempts: 2,
      constraints: { nodeId },
    });
    const get = () => client.get<Job>(`/v1/jobs/${job.id}`);
    await until('the job to run', async () => (await get()).status === 'running');
    await agents[0]!.kill('SIGKILL');
    const containers = (epoch?: number) =>
      engine.listContainers({ all: true, filters: { label: [`io.gantry.job=${job.id}`, ...(epoch ? [`io.gantry.epoch=${epoch}`] : [])] } });
    const first = await get();
    expect((await containers(first.leaseEpoch))[0]?.State).toBe('running');
    // The lease lapses while the agent is away: the job goes back to the queue.
    await until('the lease to lapse', async () => (await get()).status === 'queued', 45_000);

    const again = spawnAgent(['run', '--state-dir', path.join(work, 'node'), '--heartbeat-seconds', '1'], env);
    agents.push(again);
    await until('the stale container to be removed', async () => (await containers(first.leaseEpoch)).length === 0, 30_000);
    const end = await until('the job to end', async () => {
      const j = await get();
      return ['succeeded', 'failed', 'cancelled'].includes(j.status) ? j : null;
    }, 90_000);
    expect(end).toMatchObject({ status: 'succeeded', attempts: 2 });
    expect(again.stdout.join('\n')).toMatch(/discarding a run whose lease is gone/);
    expect(await containers()).toEqual([]);
  }, 180_000);
});
