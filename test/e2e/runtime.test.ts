// Leased jobs as real containers: the coordinator on a loopback port, the agent as its own
// process (`gantry-agent join --run`), the Docker engine this machine runs (.ci/run starts it,
// with the busybox test image and a loopback registry). Skipped, with the reason, without them.
import { createHash } from 'node:crypto';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import Docker from 'dockerode';
import * as tar from 'tar-stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ApiClient } from '../../shared/client.ts';
import type { Job } from '../../shared/jobs.ts';
import { spawnAgent, startLocalCoordinator, type AgentProcess, type LocalCoordinator } from '../support/agent-process.ts';
import { dockerOptions, dockerTestImage, registryImage, requireDockerOrSkip } from '../support/docker-env.ts';
import { createFakeNvidiaSmi, type FakeNvidiaSmi } from '../support/fake-nvidia-smi.ts';

const docker = await requireDockerOrSkip();
const engine = new Docker(dockerOptions(30_000));

async function until<T>(what: string, fn: () => Promise<T | null | undefined | false>, timeoutMs = 60_000, everyMs = 200): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

const terminal = ['succeeded', 'failed', 'cancelled'];
const sha = (b: Buffer | string) => `sha256:${createHash('sha256').update(b).digest('hex')}`;

/** The agent's peak resident memory so far (Linux: VmHWM of its process), in MiB. */
async function peakRssMb(pid: number): Promise<number> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8');
  const kb = Number(/VmHWM:\s+(\d+) kB/.exec(status)?.[1] ?? NaN);
  return kb / 1024;
}

async function untarAll(body: ArrayBuffer): Promise<Map<string, string>> {
  const out = new Map<string, string>();
  const extract = tar.extract();
  const done = (async () => {
    for await (const entry of extract) {
      const parts: Buffer[] = [];
      for await (const p of entry) parts.push(p as Buffer);
      out.set(entry.header.name, Buffer.concat(parts).toString('utf8'));
    }
  })();
  Readable.from([Buffer.from(body)]).pipe(extract as never);
  await done;
  return out;
}

describe.skipIf(!docker)('jobs run as containers through the Docker engine', () => {
  let c: LocalCoordinator;
  let work: string;
  let provider: ApiClient;
  let client: ApiClient;
  let clientKey: string;
  const agents: AgentProcess[] = [];
  const nodeIds: string[] = [];
  let cpuNode: { nodeId: string; stateDir: string; agent: AgentProcess };

  const agentEnv = (extra: Record<string, string> = {}) => ({
    // No nvidia-smi on this PATH unless a test puts its fake first: a CPU-only node.
    GANTRY_AGENT_STATE_DIR: '',
    GANTRY_AGENT_STOP_GRACE_SECONDS: '2',
    ...extra,
  });

  async function join(name: string, env: Record<string, string>): Promise<{ nodeId: string; stateDir: string; agent: AgentProcess }> {
    const stateDir = path.join(work, name);
    const { token } = await provider.post<{ token: string }>('/v1/enrollment-tokens', {});
    const agent = spawnAgent(['join', '--coordinator', c.url, '--token', token, '--state-dir', stateDir, '--name', name, '--run', '--heartbeat-seconds', '1'], env);
    agents.push(agent);
    const joined = await agent.waitForLine(/as node (node_\w+)/, 60_000);
    const nodeId = /as node (node_\w+)/.exec(joined)![1]!;
    nodeIds.push(nodeId);
    await agent.waitForLine(/connected to the coordinator/, 60_000);
    return { nodeId, stateDir, agent };
  }

  const spec = (command: string, extra: Record<string, unknown> = {}, on = cpuNode.nodeId) => ({
    name: 'runtime-e2e',
    image: dockerTestImage,
    command: ['sh', '-c', command],
    resources: { cpu: 0.5, memoryMb: 64 },
    timeoutSeconds: 120,
    maxAttempts: 1,
    constraints: { nodeId: on },
    ...extra,
  });
  const submit = (body: Record<string, unknown>) => client.post<Job>('/v1/jobs', body);
  const job = (id: string) => client.get<Job>(`/v1/jobs/${id}`);
  const ended = (id: string, timeoutMs = 90_000) => until(`${id} to end`, async () => {
    const j = await job(id);
    return terminal.includes(j.status) ? j : null;
  }, timeoutMs);
  const events = async (id: string) => (await client.get<{ items: { reason: string; to: string }[] }>(`/v1/jobs/${id}/events`)).items;
  async function logs(id: string) {
    const chunks: { seq: number; stream: string; text: string }[] = [];
    let cursor: string | null = null;
    for (;;) {
      const page: { items: typeof chunks; nextCursor: string | null } = await client.get(`/v1/jobs/${id}/logs?limit=10000${cursor ? `&cursor=${cursor}` : ''}`);
      chunks.push(...page.items);
      if (!page.nextCursor) break;
      cursor = page.nextCursor;
    }
    const lines = (stream: string) => chunks.filter((ch) => ch.stream === stream).flatMap((ch) => ch.text.slice(0, -1).split('\n'));
    return { chunks, stdout: lines('stdout'), stderr: lines('stderr'), system: lines('system') };
  }
  const containersOf = (jobId: string) => engine.listContainers({ all: true, filters: { label: [`io.gantry.job=${jobId}`] } });

  beforeAll(async () => {
    c = await startLocalCoordinator('pglite', { GANTRY_NODE_TTL_SECONDS: '10' });
    work = await mkdtemp(path.join(tmpdir(), 'gantry-runtime-e2e-'));
    const p = await c.admin.post<{ id: string }>('/v1/accounts', { name: 'runtime-provider', kind: 'provider' });
    provider = new ApiClient({ baseUrl: c.url, token: (await c.admin.post<{ key: string }>(`/v1/accounts/${p.id}/keys`, { scopes: ['provider'] })).key });
    const a = await c.admin.post<{ id: string }>('/v1/accounts', { name: 'runtime-client', kind: 'client' });
    clientKey = (await c.admin.post<{ key: string }>(`/v1/accounts/${a.id}/keys`, { scopes: ['client'] })).key;
    client = new ApiClient({ baseUrl: c.url, token: clientKey });
    cpuNode = await join('cpu-node', agentEnv());
  }, 180_000);

  afterAll(async () => {
    for (const a of agents) await a.kill();
    for (const nodeId of nodeIds) {
      for (const ct of await engine.listContainers({ all: true, filters: { label: [`io.gantry.node=${nodeId}`] } }).catch(() => [])) {
        await engine.getContainer(ct.Id).remove({ force: true }).catch(() => {});
      }
      const { Volumes } = await engine.listVolumes({ filters: { label: [`io.gantry.node=${nodeId}`] } }).catch(() => ({ Volumes: [] }));
      for (const v of Volumes ?? []) await engine.getVolume(v.Name).remove().catch(() => {});
    }
    await c?.close();
    if (work) await rm(work, { recursive: true, force: true });
  });

  it('ends a job that prints on both streams and exits 3 failed with exit code 3, every line in order within its stream', async () => {
    const j = await submit(spec('for i in $(seq 1 300); do echo "out $i"; echo "err $i" >&2; done; exit 3'));
    const end = await ended(j.id);
    expect(end).toMatchObject({ status: 'failed', exitCode: 3 });
    const l = await logs(j.id);
    expect(l.stdout).toEqual(Array.from({ length: 300 }, (_, i) => `out ${i + 1}`));
    expect(l.stderr).toEqual(Array.from({ length: 300 }, (_, i) => `err ${i + 1}`));
    // Its container is gone once the end is reported.
    expect(await containersOf(j.id)).toEqual([]);
  });

  it('stores /outputs/result.json on the job and serves /outputs as a tar to its owner', async () => {
    const j = await submit(spec('mkdir -p /outputs/model && printf weights > /outputs/model/w.bin && echo \'{"loss": 0.25, "epochs": 3}\' > /outputs/result.json'));
    const end = await ended(j.id);
    expect(end).toMatchObject({ status: 'succeeded', exitCode: 0, result: { loss: 0.25, epochs: 3 } });
    const res = await fetch(new URL(`/v1/jobs/${j.id}/outputs`, c.url), { headers: { authorization: `Bearer ${clientKey}` } });
    expect(res.status).toBe(200);
    const files = await untarAll(await res.arrayBuffer());
    expect(files.get('model/w.bin')).toBe('weights');
    expect(JSON.parse(files.get('result.json')!)).toEqual({ loss: 0.25, epochs: 3 });
  });

  it('lays inputs out read-only at /inputs: a file, and a tar unpacked into a folder', async () => {
    const upload = async (body: Buffer) =>
      (await (await fetch(new URL('/v1/blobs', c.url), { method: 'POST', body: new Uint8Array(body), headers: { authorization: `Bearer ${clientKey}` } })).json()) as { digest: string };
    const file = await upload(Buffer.from('hello input\n'));
    const pack = tar.pack();
    pack.entry({ name: 'a.txt' }, 'in the tar\n');
    pack.entry({ name: 'sub/b.txt' }, 'deeper\n');
    pack.finalize();
    const parts: Buffer[] = [];
    for await (const p of pack) parts.push(p as Buffer);
    const folder = await upload(Buffer.concat(parts));
    expect(file.digest).toBe(sha('hello input\n'));
    const j = await submit(
      spec('cat /inputs/data.txt /inputs/set/a.txt /inputs/set/sub/b.txt; if touch /inputs/x 2>/dev/null; then echo WRITABLE; else echo read-only; fi', {
        inputs: [
          { digest: file.digest, path: 'data.txt' },
          { digest: folder.digest, path: 'set/' },
        ],
      }),
    );
    expect(await ended(j.id)).toMatchObject({ status: 'succeeded' });
    expect((await logs(j.id)).stdout).toEqual(['hello input', 'in the tar', 'deeper', 'read-only']);
  });

  it('stops a job past its timeout and fails it for that', async () => {
    const j = await submit(spec('echo started; sleep 300', { timeoutSeconds: 2 }));
    const end = await ended(j.id);
    expect(end.status).toBe('failed');
    expect(end.error).toMatch(/timeout/);
    expect((await events(j.id)).map((e) => e.reason).join('\n')).toMatch(/timeout/);
    expect((await logs(j.id)).stdout).toEqual(['started']);
    expect(await containersOf(j.id)).toEqual([]);
  });

  it('stops a cancelled job', async () => {
    const j = await submit(spec('echo started; sleep 300'));
    await until('the job to run', async () => (await job(j.id)).status === 'running');
    await until('its first line', async () => (await logs(j.id)).stdout.length > 0);
    await client.post(`/v1/jobs/${j.id}/cancel`);
    const end = await ended(j.id, 60_000);
    expect(end.status).toBe('cancelled');
    expect(await containersOf(j.id)).toEqual([]);
  });

  it('reports a job over its memory limit as killed for memory', async () => {
    const j = await submit(spec('head -c 300m /dev/zero | tail', { resources: { cpu: 0.5, memoryMb: 32 } }));
    const end = await ended(j.id);
    expect(end.status).toBe('failed');
    expect(end.exitCode).toBe(137);
    expect(end.error).toMatch(/out of memory/);
    expect((await events(j.id)).map((e) => e.reason).join('\n')).toMatch(/out of memory/);
  });

  it('pulls an image missing locally from the registry by its digest, and fails a job whose image does not exist in plain words', async () => {
    // What the registry names for the tag now; the engine's copy pulled by it is removed, so it is pulled again.
    const digest = (await engine.getImage(registryImage).distribution()).Descriptor.digest;
    const digestRef = `${registryImage.replace(/:[^/:]+$/, '')}@${digest}`;
    await engine.getImage(digestRef).remove({ force: true }).catch(() => {});
    const pulled = await submit(spec('echo pulled', { image: registryImage }));
    expect(await ended(pulled.id)).toMatchObject({ status: 'succeeded' });
    expect((await logs(pulled.id)).stdout).toEqual(['pulled']);
    const reasons = (await events(pulled.id)).map((e) => e.reason).join('\n');
    expect(reasons).toMatch(/pulling image .*\(sha256:[0-9a-f]{64}\)/);
    expect(reasons).toMatch(/pulled image/);
    // Pulled by its digest: that is the name the engine holds it under.
    expect((await engine.getImage(digestRef).inspect()).RepoDigests).toContain(digestRef);

    // Pinned by digest: pulled by it, and run.
    await engine.getImage(digestRef).remove({ force: true }).catch(() => {});
    const pinned = await submit(spec('echo pinned', { image: digestRef }));
    expect(await ended(pinned.id)).toMatchObject({ status: 'succeeded' });
    expect((await logs(pinned.id)).stdout).toEqual(['pinned']);

    const registry = registryImage.split('/')[0];
    const missing = await submit(spec('true', { image: `${registry}/gantry/does-not-exist:1.0`, maxAttempts: 3 }));
    const end = await ended(missing.id);
    expect(end.status).toBe('failed');
    expect(end.error).toBe(`image could not be pulled: ${registry}/gantry/does-not-exist:1.0 is not a public image at ${registry}`);
    // Failed on the first try, not retried: one placement.
    expect(end.attempts).toBe(1);
  });

  it('runs 200,000 lines of output to the client complete, with the agent’s memory under its bound', async () => {
    const before = await peakRssMb(cpuNode.agent.child.pid!);
    const j = await submit(spec('seq 1 200000; echo done >&2'));
    expect(await ended(j.id, 180_000)).toMatchObject({ status: 'succeeded' });
    const l = await logs(j.id);
    expect(l.stdout.length).toBe(200_000);
    expect(l.stdout[0]).toBe('1');
    expect(l.stdout[199_999]).toBe('200000');
    expect(l.stdout.every((line, i) => line === String(i + 1))).toBe(true);
    expect(l.stderr).toEqual(['done']);
    const peak = await peakRssMb(cpuNode.agent.child.pid!);
    // The shipper holds at most a few MiB of output; the agent itself (node, tsx, deps) is most of it.
    expect(peak - before).toBeLessThan(64);
    expect(peak).toBeLessThan(400);
  }, 240_000);

  it('picks its container up again after the agent is killed and restarted mid-job', async () => {
    const j = await submit(spec('for i in $(seq 1 40); do echo "tick $i"; sleep 0.2; done; echo finished'));
    await until('the job to run', async () => (await job(j.id)).status === 'running');
    await until('some output', async () => (await logs(j.id)).stdout.length >= 3);
    await cpuNode.agent.kill('SIGKILL');
    // The container runs on without its agent.
    const [running] = await containersOf(j.id);
    expect(running?.State).toBe('running');
    const again = spawnAgent(['run', '--state-dir', cpuNode.stateDir, '--heartbeat-seconds', '1'], agentEnv());
    agents.push(again);
    cpuNode = { ...cpuNode, agent: again };
    const end = await ended(j.id, 90_000);
    expect(end).toMatchObject({ status: 'succeeded', exitCode: 0 });
    const out = (await logs(j.id)).stdout;
    expect(out[out.length - 1]).toBe('finished');
    // Around the restart a line may repeat; none is lost for good here, and the order holds.
    const ticks = [...new Set(out.filter((x) => x.startsWith('tick ')))];
    expect(ticks).toEqual(Array.from({ length: 40 }, (_, i) => `tick ${i + 1}`));
    expect(await containersOf(j.id)).toEqual([]);
  }, 180_000);

  describe('GPU leases', () => {
    let fake: FakeNvidiaSmi;
    let gpuNode: { nodeId: string };
    beforeAll(async () => {
      fake = await createFakeNvidiaSmi({ xml: 'rtx-a5000-x2-v13.xml' });
      gpuNode = await join('gpu-node', agentEnv({ PATH: `${fake.path}${path.delimiter}${process.env.PATH}`, GANTRY_AGENT_KEEP_FAILED_CONTAINERS: '1' }));
    }, 120_000);
    afterAll(async () => fake?.cleanup());

    it('creates the container with exactly the leased GPU, its limits and hardening; starting it needs the NVIDIA runtime', async () => {
      const j = await submit(spec('nvidia-smi', { resources: { cpu: 1.5, memoryMb: 96, gpus: 1, shmMb: 256 }, network: 'none' }, gpuNode.nodeId));
      const end = await ended(j.id);
      expect(end.status).toBe('failed');
      expect(end.error).toMatch(/could not select device driver "nvidia"/);
      expect(end.gpuIds).toHaveLength(1);
      const leased = end.gpuIds![0]!;
      const [ct] = await containersOf(j.id);
      expect(ct).toBeDefined();
      const info = await engine.getContainer(ct!.Id).inspect();
      const hc = info.HostConfig as Docker.HostConfig & { DeviceRequests: Docker.DeviceRequest[] };
      expect(hc.DeviceRequests).toEqual([{ Driver: 'nvidia', Count: 0, DeviceIDs: [leased], Capabilities: [['gpu']], Options: null }]);
      expect(info.Config.Env).toContain(`NVIDIA_VISIBLE_DEVICES=${leased}`);
      expect(hc).toMatchObject({
        NanoCpus: 1_500_000_000,
        Memory: 96 * 1024 * 1024,
        MemorySwap: 96 * 1024 * 1024,
        PidsLimit: 4096,
        CapDrop: ['ALL'],
        SecurityOpt: ['no-new-privileges'],
        ReadonlyRootfs: true,
        ShmSize: 256 * 1024 * 1024,
        NetworkMode: 'none',
      });
      expect(Object.keys(hc.Tmpfs ?? {}).sort()).toEqual(['/home/gantry', '/tmp']);
      // No host folder of the agent: /outputs is an engine volume of this run.
      expect(hc.Binds ?? []).toEqual([]);
      expect(hc.Mounts).toEqual([expect.objectContaining({ Type: 'volume', Source: `gantry-${j.id}-1-outputs`, Target: '/outputs' })]);
      // Placed once, at epoch 1 (the end raised the job's epoch again).
      expect(info.Config.Labels).toMatchObject({ 'io.gantry.job': j.id, 'io.gantry.node': gpuNode.nodeId, 'io.gantry.epoch': '1' });
      await engine.getContainer(ct!.Id).remove({ force: true });
    });

    it('shows a job without GPUs on a GPU node no GPU (NVIDIA_VISIBLE_DEVICES=void)', async () => {
      const j = await submit(spec('echo "$NVIDIA_VISIBLE_DEVICES"', { env: { NVIDIA_VISIBLE_DEVICES: 'all' } }, gpuNode.nodeId));
      expect(await ended(j.id)).toMatchObject({ status: 'succeeded' });
      expect((await logs(j.id)).stdout).toEqual(['void']);
    });
  });
});
