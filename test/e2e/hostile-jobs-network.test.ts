// A job is a stranger's code on the provider's machine: where its network reaches. The node is a
// network namespace the test makes, with a dockerd of its own (iptables on) and the agent inside
// (`nsenter --net`); "the outside" is a second namespace behind a veth link, holding one public
// address (203.0.113.10, TEST-NET-3) and the addresses a job must not reach: a private host,
// a CGNAT one, the cloud metadata endpoint. The shared engine and the host's firewall are not
// touched; all traffic goes to namespaces and containers this test made.
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type Docker from 'dockerode';
import { sql } from 'drizzle-orm';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ApiClient } from '../../shared/client.ts';
import type { Job } from '../../shared/jobs.ts';
import type { DryRun, Offers } from '../../shared/pool.ts';
import { runAgentCommand, spawnAgent, startLocalCoordinator, type AgentProcess, type LocalCoordinator } from '../support/agent-process.ts';
import { dockerTestImage, requireDockerOrSkip, testRegistry } from '../support/docker-env.ts';
import { answerIn, carryLoopbackPort, linkNamespaces, makeNamespace, netnsSupport, startDockerd, stopAll, type Namespace, type NamespacedEngine } from '../support/netns.ts';
import { until } from '../support/until.ts';

const docker = await requireDockerOrSkip();
const support = netnsSupport();
if (!support.ok && process.env.GANTRY_REQUIRE_DOCKER === '1') throw new Error(`GANTRY_REQUIRE_DOCKER=1 but the network isolation test cannot run: ${support.why}`);
const terminal = ['succeeded', 'failed', 'cancelled'];

const nodeAddr = '198.51.100.1';
const outsideAddr = '198.51.100.2';
const targets = {
  internet: '203.0.113.10',
  private: '10.77.0.10',
  cgnat: '100.64.7.10',
  metadata: '169.254.169.254',
};

describe.skipIf(!docker || !support.ok)('a job’s bridge network reaches the internet and nothing of the provider’s', () => {
  let c: LocalCoordinator;
  let work: string;
  let provider: ApiClient;
  let client: ApiClient;
  let node: Namespace;
  let outside: Namespace;
  let engine: NamespacedEngine;
  const closers: (() => Promise<void>)[] = [];
  const agents: AgentProcess[] = [];
  /** In the node namespace, on its own engine with the rules installed. */
  let isolatedNode: string;
  /** On the shared engine, which has no rules: bridge jobs are not for it. */
  let plainNode: string;

  async function join(name: string, env: Record<string, string>, wrap: string[] = []): Promise<string> {
    const { token } = await provider.post<{ token: string }>('/v1/enrollment-tokens', {});
    const agent = spawnAgent(
      ['join', '--coordinator', c.url, '--token', token, '--state-dir', path.join(work, name), '--name', name, '--run', '--heartbeat-seconds', '1'],
      { GANTRY_AGENT_STATE_DIR: '', GANTRY_AGENT_UNISOLATED_BRIDGE: '0', ...env },
      null,
      wrap,
    );
    agents.push(agent);
    const nodeId = /as node (node_\w+)/.exec(await agent.waitForLine(/as node (node_\w+)/, 60_000))![1]!;
    await agent.waitForLine(/connected to the coordinator/, 60_000);
    return nodeId;
  }

  const spec = (command: string, on: string, extra: Record<string, unknown> = {}) => ({
    name: 'hostile-network',
    image: dockerTestImage,
    command: ['sh', '-c', command],
    resources: { cpu: 0.25, memoryMb: 32 },
    timeoutSeconds: 120,
    maxAttempts: 1,
    constraints: { nodeId: on },
    ...extra,
  });
  const job = (id: string) => client.get<Job>(`/v1/jobs/${id}`);
  const ended = (id: string) => until(`${id} to end`, async () => ((j) => (terminal.includes(j.status) ? j : null))(await job(id)), 90_000);
  async function stdout(id: string): Promise<string[]> {
    const page = await client.get<{ items: { stream: string; text: string }[] }>(`/v1/jobs/${id}/logs?limit=1000`);
    return page.items.filter((ch) => ch.stream === 'stdout').flatMap((ch) => ch.text.split('\n').filter(Boolean));
  }
  async function containerNet(jobId: string): Promise<{ ip: string; gateway: string }> {
    return until(`${jobId}'s container address`, async () => {
      const [ct] = await engine.docker.listContainers({ filters: { label: [`io.gantry.job=${jobId}`] } });
      const net = Object.values(ct?.NetworkSettings?.Networks ?? {})[0] as Docker.NetworkInfo | undefined;
      return net?.IPAddress ? { ip: net.IPAddress, gateway: net.Gateway } : null;
    });
  }

  beforeAll(async () => {
    c = await startLocalCoordinator('pglite', {});
    work = await mkdtemp(path.join(tmpdir(), 'gantry-hostile-network-'));
    const p = await c.admin.post<{ id: string }>('/v1/accounts', { name: 'network-provider', kind: 'provider' });
    provider = new ApiClient({ baseUrl: c.url, token: (await c.admin.post<{ key: string }>(`/v1/accounts/${p.id}/keys`, { scopes: ['provider'] })).key });
    const a = await c.admin.post<{ id: string }>('/v1/accounts', { name: 'network-client', kind: 'client' });
    client = new ApiClient({ baseUrl: c.url, token: (await c.admin.post<{ key: string }>(`/v1/accounts/${a.id}/keys`, { scopes: ['client'] })).key });

    node = await makeNamespace();
    outside = await makeNamespace();
    linkNamespaces(node, nodeAddr, outside, outsideAddr);
    node.sh('ip', 'route', 'add', 'default', 'via', outsideAddr);
    for (const addr of Object.values(targets)) outside.sh('ip', 'addr', 'add', `${addr}/32`, 'dev', 'lo');
    const outsideServer = await answerIn(outside, 8080);
    // A service of the node's host, on every address it has (its link, the jobs' bridge gateway).
    const hostServer = await answerIn(node, 8081);
    closers.push(async () => void outsideServer.kill(), async () => void hostServer.kill());

    engine = await startDockerd(node);
    // The coordinator and the test registry, at the same loopback addresses inside the node.
    closers.push(await carryLoopbackPort(node, Number(new URL(c.url).port), work));
    closers.push(await carryLoopbackPort(node, Number(testRegistry.split(':')[1]), work));

    const rules = await runAgentCommand(['network-rules'], { DOCKER_HOST: engine.host }, node.enter);
    expect(rules.code, rules.stderr.join('\n')).toBe(0);
    [isolatedNode, plainNode] = await Promise.all([join('isolated', { DOCKER_HOST: engine.host }, node.enter), join('plain', {})]);
  }, 240_000);

  afterAll(async () => {
    for (const a of agents) await a.kill();
    await engine?.close();
    for (const close of closers.reverse()) await close().catch(() => {});
    await node?.close();
    await outside?.close();
    await stopAll();
    await c?.close();
    if (work) await rm(work, { recursive: true, force: true });
  }, 120_000);

  it('reaches a public address, and neither another job, the host, a private range, CGNAT nor link-local', async () => {
    const listener = await client.post<Job>('/v1/jobs', spec('while true; do echo reached | nc -l -p 7000; done', isolatedNode));
    await until('the listening job to run', async () => (await job(listener.id)).status === 'running');
    const other = await containerNet(listener.id);
    const probes: Record<string, string> = {
      ...Object.fromEntries(Object.entries(targets).map(([name, addr]) => [name, `${addr} 8080`])),
      host: `${nodeAddr} 8081`,
      gateway: `${other.gateway} 8081`,
      'other-job': `${other.ip} 7000`,
    };
    const script = [
      'probe() { if timeout 5 nc -w 3 $2 $3 </dev/null 2>/dev/null | grep -q reached; then echo "$1 open"; else echo "$1 closed"; fi; }',
      ...Object.entries(probes).map(([name, target]) => `probe ${name} ${target} &`),
      'wait',
    ].join('\n');
    const prober = await client.post<Job>('/v1/jobs', spec(script, isolatedNode));
    expect(await ended(prober.id)).toMatchObject({ status: 'succeeded' });
    const seen = Object.fromEntries((await stdout(prober.id)).map((l) => l.split(' ') as [string, string]));
    expect(seen).toEqual({
      internet: 'open',
      private: 'closed',
      cgnat: 'closed',
      metadata: 'closed',
      host: 'closed',
      gateway: 'closed',
      'other-job': 'closed',
    });
    await client.post(`/v1/jobs/${listener.id}/cancel`, {});
  }, 120_000);

  it('a node without the rules takes only network: none jobs, and its hardware, offers and dry runs say so', async () => {
    const offers = await client.get<Offers>('/v1/offers?gpus=0&limit=10');
    expect(offers.items.find((o) => o.nodeId === isolatedNode)?.networks).toEqual(['bridge', 'none']);
    expect(offers.items.find((o) => o.nodeId === plainNode)?.networks).toEqual(['none']);

    const dry = await client.post<DryRun>('/v1/jobs/dry-run', spec('true', plainNode));
    expect(dry.fits).toBe(false);
    expect(dry.ruledOut.map((r) => r.constraint)).toContain('network');
    expect((await client.post<DryRun>('/v1/jobs/dry-run', spec('true', plainNode, { network: 'none' }))).fits).toBe(true);

    const none = await client.post<Job>('/v1/jobs', spec('echo alone', plainNode, { network: 'none' }));
    expect(await ended(none.id)).toMatchObject({ status: 'succeeded' });

    const hw = await runAgentCommand(['hardware', '--work-dir', work], { GANTRY_AGENT_UNISOLATED_BRIDGE: '0' });
    expect(hw.code).toBe(0);
    expect(hw.stdout.join('\n')).toMatch(/^networks\s+none only/m);
    expect(hw.stdout.join('\n')).toMatch(/^warning: this node takes only network: none jobs: /m);
  }, 120_000);

  it('the agent refuses a bridge job it cannot isolate, even when the coordinator places one', async () => {
    // A coordinator that did not know the node's networks would place it: the agent is the boundary.
    await c.database.rows(sql`update nodes set runtime = runtime - 'networks' where id = ${plainNode}`);
    const j = await client.post<Job>('/v1/jobs', spec('echo should-not-run', plainNode));
    const end = await ended(j.id);
    expect(end).toMatchObject({ status: 'failed', error: 'network not allowed on this node: it takes only network: none jobs' });
  }, 120_000);
});
