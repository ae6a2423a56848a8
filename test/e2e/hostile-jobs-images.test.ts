// A job is a stranger's code on the provider's machine: what its image reference can make the
// provider's engine do. The coordinator on a loopback port, the agent as its own process, this
// machine's Docker engine and the loopback registry of .ci/docker-setup.sh. Every image the test
// makes is its own repository (pushed to, or tagged for, 127.0.0.1:5000/gantry-test-images/…) so
// that removing it leaves the shared test image alone.
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import http from 'node:http';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import Docker from 'dockerode';
import { sql } from 'drizzle-orm';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ApiClient } from '../../shared/client.ts';
import type { Job } from '../../shared/jobs.ts';
import type { DryRun, Offers } from '../../shared/pool.ts';
import { spawnAgent, startLocalCoordinator, type AgentProcess, type LocalCoordinator } from '../support/agent-process.ts';
import { dockerOptions, localTestImage, pushToTestRegistry, requireDockerOrSkip, testRegistry } from '../support/docker-env.ts';
import { until } from '../support/until.ts';

const docker = await requireDockerOrSkip();
const engine = new Docker(dockerOptions(30_000));
const terminal = ['succeeded', 'failed', 'cancelled'];

const freePort = async () => {
  const s = net.createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  const port = (s.address() as net.AddressInfo).port;
  await new Promise((r) => s.close(r));
  return port;
};

/**
 * A registry that wants a login, as a provider's private one does: distribution's `silly` auth
 * sends every client to a token endpoint, which here gives a token to any client with a
 * username and password, and none to an anonymous one.
 */
async function startPrivateRegistry(dir: string): Promise<{ host: string; close(): Promise<void> }> {
  const tokens = http.createServer((req, res) => {
    if (!/^Basic /.test(req.headers.authorization ?? '')) return void res.writeHead(401).end('{}');
    res.setHeader('content-type', 'application/json');
    res.end(JSON.stringify({ token: 'provider-login', access_token: 'provider-login' }));
  });
  await new Promise<void>((r) => tokens.listen(0, '127.0.0.1', r));
  const port = await freePort();
  const config = path.join(dir, 'registry.yml');
  await writeFile(
    config,
    [
      'version: 0.1',
      'log: { level: warn }',
      `storage: { filesystem: { rootdirectory: ${path.join(dir, 'registry')} } }`,
      `http: { addr: 127.0.0.1:${port} }`,
      `auth: { silly: { realm: "http://127.0.0.1:${(tokens.address() as net.AddressInfo).port}/token", service: gantry-test } }`,
    ].join('\n'),
  );
  const registry: ChildProcess = spawn('docker-registry', ['serve', config], { stdio: 'ignore' });
  await until('the private registry', () => fetch(`http://127.0.0.1:${port}/v2/`).then((r) => r.status === 401, () => false), 30_000);
  return {
    host: `127.0.0.1:${port}`,
    async close() {
      registry.kill();
      tokens.close();
    },
  };
}

describe.skipIf(!docker)('a job’s image reference cannot make the provider’s engine run or fetch what the provider did not allow', () => {
  const run = randomBytes(4).toString('hex');
  const repo = `${testRegistry}/gantry-test-images/${run}`;
  /** In the registry (pushed by this test): a public image of an allowed registry. */
  const publicImage = `${repo}-public:1`;
  /** Only on this engine (tagged, never pushed): what a provider built or pulled with its login. */
  const localOnlyImage = `${repo}-local:1`;
  let c: LocalCoordinator;
  let work: string;
  let privateRegistry: { host: string; close(): Promise<void> };
  /** In the private registry, pushed with a login: the engine holds it, with its digest. */
  let privateImage: string;
  let provider: ApiClient;
  let client: ApiClient;
  const agents: AgentProcess[] = [];
  /** Allows only the loopback test registry; its image cache is capped at 1 MB. */
  let loopbackNode: string;
  /** The default registries (public ones only); the default cache cap. */
  let defaultNode: string;

  async function join(name: string, env: Record<string, string>): Promise<string> {
    const { token } = await provider.post<{ token: string }>('/v1/enrollment-tokens', {});
    const agent = spawnAgent(['join', '--coordinator', c.url, '--token', token, '--state-dir', path.join(work, name), '--name', name, '--run', '--heartbeat-seconds', '1'], {
      GANTRY_AGENT_STATE_DIR: '',
      ...env,
    });
    agents.push(agent);
    const nodeId = /as node (node_\w+)/.exec(await agent.waitForLine(/as node (node_\w+)/, 60_000))![1]!;
    await agent.waitForLine(/connected to the coordinator/, 60_000);
    return nodeId;
  }

  const spec = (image: string, on: string, extra: Record<string, unknown> = {}) => ({
    name: 'hostile-image',
    image,
    command: ['sh', '-c', 'echo ran'],
    resources: { cpu: 0.25, memoryMb: 32 },
    timeoutSeconds: 60,
    maxAttempts: 1,
    constraints: { nodeId: on },
    ...extra,
  });
  const ended = (id: string) =>
    until(`${id} to end`, async () => {
      const j = await client.get<Job>(`/v1/jobs/${id}`);
      return terminal.includes(j.status) ? j : null;
    }, 90_000);
  const events = async (id: string) => (await client.get<{ items: { reason: string; to: string }[] }>(`/v1/jobs/${id}/events`)).items;

  beforeAll(async () => {
    const local = engine.getImage(localTestImage);
    await local.tag({ repo: `${repo}-public`, tag: '1' });
    await pushToTestRegistry(engine, publicImage);
    await local.tag({ repo: `${repo}-local`, tag: '1' });

    work = await mkdtemp(path.join(tmpdir(), 'gantry-hostile-images-'));
    privateRegistry = await startPrivateRegistry(work);
    privateImage = `${privateRegistry.host}/private/${run}:1`;
    await local.tag({ repo: `${privateRegistry.host}/private/${run}`, tag: '1' });
    // Pushed with a login, as a provider does to their own registry.
    const pushed = (await engine.getImage(privateImage).push({ authconfig: { username: 'provider', password: 'secret', serveraddress: privateRegistry.host } } as never)) as unknown as NodeJS.ReadableStream;
    await new Promise<void>((resolve, reject) =>
      engine.modem.followProgress(pushed, (err: Error | null, events: { error?: string }[]) => {
        const failed = events?.find((e) => e.error);
        if (err || failed) reject(err ?? new Error(failed!.error));
        else resolve();
      }),
    );

    c = await startLocalCoordinator('pglite', {});
    const p = await c.admin.post<{ id: string }>('/v1/accounts', { name: 'images-provider', kind: 'provider' });
    provider = new ApiClient({ baseUrl: c.url, token: (await c.admin.post<{ key: string }>(`/v1/accounts/${p.id}/keys`, { scopes: ['provider'] })).key });
    const a = await c.admin.post<{ id: string }>('/v1/accounts', { name: 'images-client', kind: 'client' });
    client = new ApiClient({ baseUrl: c.url, token: (await c.admin.post<{ key: string }>(`/v1/accounts/${a.id}/keys`, { scopes: ['client'] })).key });
    [loopbackNode, defaultNode] = await Promise.all([
      join('loopback', { GANTRY_AGENT_ALLOWED_REGISTRIES: `${testRegistry},${privateRegistry.host}`, GANTRY_AGENT_IMAGE_CACHE_MB: '1' }),
      // Empty: the agent's default list, not the loopback registry test support names.
      join('default', { GANTRY_AGENT_ALLOWED_REGISTRIES: '' }),
    ]);
  }, 180_000);

  afterAll(async () => {
    for (const a of agents) await a.kill();
    await c?.close();
    await privateRegistry?.close();
    if (work) await rm(work, { recursive: true, force: true });
    for (const ref of [publicImage, localOnlyImage, privateImage]) if (ref) await engine.getImage(ref).remove().catch(() => {});
    for (const img of await engine.listImages({ filters: { reference: [`${repo}-*`] } }).catch(() => [])) {
      for (const d of img.RepoDigests ?? []) if (d.startsWith(repo)) await engine.getImage(d).remove().catch(() => {});
    }
    const privateRepo = privateImage?.replace(/:1$/, '');
    for (const d of (await engine.getImage(localTestImage).inspect().catch(() => null))?.RepoDigests ?? []) {
      if (privateRepo && d.startsWith(privateRepo)) await engine.getImage(d).remove().catch(() => {});
    }
  });

  it('never runs an image the engine holds but its registry does not serve anonymously', async () => {
    const j = await client.post<Job>('/v1/jobs', spec(localOnlyImage, loopbackNode));
    const end = await ended(j.id);
    expect(end.status).toBe('failed');
    expect(end.error).toBe(`image could not be pulled: ${localOnlyImage} is not a public image at ${testRegistry}`);
    expect((await events(j.id)).map((e) => e.to)).not.toContain('running');
  });

  it('never runs a private image the provider pulled with their own login, by tag or by its digest', async () => {
    const held = (await engine.getImage(privateImage).inspect()).RepoDigests.find((d) => d.startsWith(privateRegistry.host))!;
    expect(held).toMatch(/@sha256:[0-9a-f]{64}$/);
    for (const image of [privateImage, held]) {
      const j = await client.post<Job>('/v1/jobs', spec(image, loopbackNode));
      const end = await ended(j.id);
      expect(end.status, image).toBe('failed');
      expect(end.error).toBe(`image could not be pulled: ${image} is not a public image at ${privateRegistry.host}`);
    }
  });

  it('refuses a loopback registry the provider did not name, without the engine reaching it', async () => {
    let connections = 0;
    const probe = net.createServer((s) => {
      connections++;
      s.end('HTTP/1.1 200 OK\r\ncontent-length: 23\r\n\r\nprovider-private-banner');
    });
    await new Promise<void>((r) => probe.listen(0, '127.0.0.1', r));
    const port = (probe.address() as net.AddressInfo).port;
    try {
      // The coordinator would not place it here (the node says it does not pull from there); one
      // that did not know the node's list would: the agent is the boundary either way.
      await c.database.rows(sql`update nodes set runtime = runtime - 'registries' where id = ${defaultNode}`);
      const image = `127.0.0.1:${port}/probe/x:1`;
      const j = await client.post<Job>('/v1/jobs', spec(image, defaultNode));
      const end = await ended(j.id);
      expect(end.status).toBe('failed');
      expect(end.error).toBe(`image not allowed on this node: 127.0.0.1:${port} is on the provider's own machine or network, which a job may not pull from`);
      expect(JSON.stringify(await events(j.id))).not.toMatch(/banner|http:|https:|connection refused/i);
      expect(connections).toBe(0);
    } finally {
      probe.close();
    }
  });

  it('pulls by the digest its registry names, and removes images of ended jobs past the cache cap', async () => {
    const j = await client.post<Job>('/v1/jobs', spec(publicImage, loopbackNode));
    expect(await ended(j.id)).toMatchObject({ status: 'succeeded' });
    const digest = (await engine.getImage(publicImage).distribution()).Descriptor.digest;
    const pinned = `${repo}-public@${digest}`;
    expect((await events(j.id)).map((e) => e.reason).join('\n')).not.toMatch(/could not/);
    // A 1 MB cap holds no busybox: the image the job ran under is removed once the job ended.
    await until(`${pinned} to leave the engine`, async () => {
      try {
        await engine.getImage(pinned).inspect();
        return false;
      } catch (err) {
        return (err as { statusCode?: number }).statusCode === 404;
      }
    });
  });

  it('offers say which registries a node pulls from; a job from another waits, and the dry run says why', async () => {
    const offers = await client.get<Offers>('/v1/offers?gpus=0&limit=10');
    expect(offers.items.find((o) => o.nodeId === loopbackNode)?.registries).toEqual([testRegistry, privateRegistry.host]);
    const image = 'ghcr.io/acme/trainer:1';
    const dry = await client.post<DryRun>('/v1/jobs/dry-run', spec(image, loopbackNode));
    expect(dry.fits).toBe(false);
    expect(dry.ruledOut.find((r) => r.constraint === 'registry')?.detail).toBe('1 node whose provider does not allow images from ghcr.io');
    const j = await client.post<Job>('/v1/jobs', spec(image, loopbackNode));
    const waiting = await until('a reason to wait', async () => (await client.get<Job>(`/v1/jobs/${j.id}`)).pendingReason);
    expect(waiting).toMatch(/that pulls images from ghcr\.io/);
    expect((await client.get<Job>(`/v1/jobs/${j.id}`)).status).toBe('queued');
    await client.post(`/v1/jobs/${j.id}/cancel`, {});
  });

  it('advertises free disk net of the room its image cache may still take', async () => {
    const nodes = await provider.get<{ items: { id: string; capacity: { diskMb: number } }[] }>('/v1/nodes');
    const disk = (id: string) => nodes.items.find((n) => n.id === id)!.capacity.diskMb;
    // The default cap is 20,480 MB, the loopback node’s 1 MB; both state dirs are on one disk (whose free space moves a little).
    expect(disk(loopbackNode) - disk(defaultNode)).toBeGreaterThan(15_000);
  });
});
