// Jobs that try to take something of the provider's: the coordinator on a loopback port, the
// agent as its own process, real containers on this machine's engine. Each case is a job a
// stranger could submit; none may read a file of the host, outgrow its disk budget, leave what
// it wrote behind, or see a secret of the node.
import { execFileSync } from 'node:child_process';
import { chown, mkdir, mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import Docker from 'dockerode';
import * as tar from 'tar-stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ApiClient } from '../../shared/client.ts';
import type { Job } from '../../shared/jobs.ts';
import { spawnAgent, startLocalCoordinator, type AgentProcess, type LocalCoordinator } from '../support/agent-process.ts';
import { dockerOptions, dockerTestImage, pushToTestRegistry, requireDockerOrSkip, testRegistry } from '../support/docker-env.ts';
import { until } from '../support/until.ts';

const docker = await requireDockerOrSkip();
const engine = new Docker(dockerOptions(30_000));

/**
 * The agent runs as a provider's own account would (install-service runs it as the sudo user):
 * nobody, with the docker group for the engine's socket. As root (the test runner here) the
 * files a root job leaves would be no obstacle to it.
 */
function providerUser(): { uid: number; gid: number } | null {
  if (process.getuid?.() !== 0) return null;
  const group = execFileSync('getent', ['group', 'docker'], { encoding: 'utf8' }).split(':')[2];
  return group ? { uid: 65534, gid: Number(group) } : null;
}
const asProvider = providerUser();
// In the loopback registry: an agent runs only images a registry serves.
const userImage = `${testRegistry}/gantry-test/busybox-user:hostile`;
const volumeImage = `${testRegistry}/gantry-test/busybox-volume:hostile`;
const terminal = ['succeeded', 'failed', 'cancelled'];

describe.skipIf(!docker)('hostile jobs', () => {
  let c: LocalCoordinator;
  let work: string;
  let stateDir: string;
  let client: ApiClient;
  let agent: AgentProcess;
  let nodeId = '';
  let enrollmentToken = '';

  const agentEnv = () => ({ GANTRY_AGENT_STATE_DIR: '', GANTRY_AGENT_STOP_GRACE_SECONDS: '2', HOME: work });
  const spec = (command: string, extra: Record<string, unknown> = {}) => ({
    name: 'hostile',
    image: dockerTestImage,
    command: ['sh', '-c', command],
    resources: { cpu: 0.5, memoryMb: 64 },
    timeoutSeconds: 120,
    maxAttempts: 1,
    network: 'none',
    constraints: { nodeId },
    ...extra,
  });
  const submit = (body: Record<string, unknown>) => client.post<Job>('/v1/jobs', body);
  const job = (id: string) => client.get<Job>(`/v1/jobs/${id}`);
  const ended = (id: string, timeoutMs = 60_000) =>
    until(`${id} to end`, async () => {
      const j = await job(id);
      return terminal.includes(j.status) ? j : null;
    }, timeoutMs);
  const events = async (id: string) => (await client.get<{ items: { reason: string; to: string; at: string }[] }>(`/v1/jobs/${id}/events`)).items;
  const stdout = async (id: string) => {
    const page = await client.get<{ items: { stream: string; text: string }[] }>(`/v1/jobs/${id}/logs?limit=10000`);
    return page.items.filter((i) => i.stream === 'stdout').map((i) => i.text).join('');
  };
  /** What of a job's run is left on this machine: its container, its volumes, its folder. */
  async function leftOf(jobId: string) {
    const containers = await engine.listContainers({ all: true, filters: { label: [`io.gantry.job=${jobId}`] } });
    const { Volumes } = await engine.listVolumes({ filters: { label: [`io.gantry.job=${jobId}`] } });
    const folders = (await readdir(path.join(stateDir, 'work', 'jobs')).catch(() => [] as string[])).filter((f) => f.startsWith(`${jobId}.`));
    return { containers: containers.length, volumes: (Volumes ?? []).length, folders };
  }
  const nothingLeft = (jobId: string, timeoutMs = 30_000) =>
    until(`nothing of ${jobId} left`, async () => {
      const left = await leftOf(jobId);
      return left.containers === 0 && left.volumes === 0 && left.folders.length === 0;
    }, timeoutMs);

  beforeAll(async () => {
    c = await startLocalCoordinator('pglite', { GANTRY_NODE_TTL_SECONDS: '10' });
    work = await mkdtemp(path.join(tmpdir(), 'gantry-hostile-e2e-'));
    if (asProvider) await chown(work, asProvider.uid, asProvider.gid);
    stateDir = path.join(work, 'node');
    const p = await c.admin.post<{ id: string }>('/v1/accounts', { name: 'hostile-provider', kind: 'provider' });
    const provider = new ApiClient({ baseUrl: c.url, token: (await c.admin.post<{ key: string }>(`/v1/accounts/${p.id}/keys`, { scopes: ['provider'] })).key });
    const a = await c.admin.post<{ id: string }>('/v1/accounts', { name: 'hostile-client', kind: 'client' });
    client = new ApiClient({ baseUrl: c.url, token: (await c.admin.post<{ key: string }>(`/v1/accounts/${a.id}/keys`, { scopes: ['client'] })).key });
    enrollmentToken = (await provider.post<{ token: string }>('/v1/enrollment-tokens', {})).token;
    agent = spawnAgent(['join', '--coordinator', c.url, '--token', enrollmentToken, '--state-dir', stateDir, '--name', 'hostile-node', '--run', '--heartbeat-seconds', '1'], agentEnv(), asProvider);
    nodeId = /as node (node_\w+)/.exec(await agent.waitForLine(/as node (node_\w+)/, 60_000))![1]!;
    await agent.waitForLine(/connected to the coordinator/, 60_000);
    // The premise of every case below: the agent's own files are not root's.
    if (asProvider) expect((await stat(path.join(stateDir, 'key.json'))).uid).toBe(asProvider.uid);
  }, 120_000);

  afterAll(async () => {
    await agent?.kill();
    for (const ct of await engine.listContainers({ all: true, filters: { label: [`io.gantry.node=${nodeId}`] } }).catch(() => [])) {
      await engine.getContainer(ct.Id).remove({ force: true }).catch(() => {});
    }
    const { Volumes } = await engine.listVolumes({ filters: { label: [`io.gantry.node=${nodeId}`] } }).catch(() => ({ Volumes: [] }));
    for (const v of Volumes ?? []) await engine.getVolume(v.Name).remove().catch(() => {});
    for (const image of [userImage, volumeImage]) await engine.getImage(image).remove({ force: true }).catch(() => {});
    await c?.close();
    if (work) await rm(work, { recursive: true, force: true }).catch(() => {});
  });

  it("stores no host file as the result: result.json linked to the agent's key.json is reported as a link", async () => {
    const keyFile = path.join(stateDir, 'key.json');
    const key = JSON.parse(await readFile(keyFile, 'utf8')) as { d: string };
    const j = await submit(spec(`ln -s ${keyFile} /outputs/result.json`));
    const end = await ended(j.id);
    expect(end.status).toBe('succeeded');
    expect(end.result).toBeNull();
    const reasons = (await events(j.id)).map((e) => e.reason).join('\n');
    expect(reasons).toMatch(/result\.json is a link, not a file: not stored on the job/);
    expect(JSON.stringify(end)).not.toContain(key.d);
  });

  it('says a linked result.json that is not JSON is not stored, without a byte of what it points at', async () => {
    const secretFile = path.join(work, 'provider-notes.txt');
    await writeFile(secretFile, 'PROVIDER-SECRET-7f3a not json at all\n');
    const j = await submit(spec(`ln -s ${secretFile} /outputs/result.json`));
    const end = await ended(j.id);
    expect(end.result).toBeNull();
    const all = JSON.stringify({ end, events: await events(j.id) });
    expect(all).toMatch(/result\.json is a link/);
    expect(all).not.toMatch(/PROVIDER|SECRET|7f3a/);
  });

  it('stops a job writing 1 GiB into /outputs within seconds of passing its disk budget, failed for disk', async () => {
    const j = await submit(spec('head -c 1073741824 /dev/zero > /outputs/big; echo wrote it all; sleep 100', { resources: { cpu: 0.5, memoryMb: 64, diskMb: 64 } }));
    const end = await ended(j.id);
    expect(end.status).toBe('failed');
    expect(end.error).toMatch(/disk budget of 64 MiB/);
    const ev = await events(j.id);
    const running = ev.find((e) => e.to === 'running')!;
    const failed = ev.find((e) => e.to === 'failed')!;
    expect(failed.reason).toMatch(/stopped: wrote more than its disk budget/);
    expect(ev.map((e) => e.reason).join('\n')).toMatch(/over its disk budget of 64 MiB .*: stopping it\n(.*\n)*outputs not kept/);
    // Counted every 2 s, killed at once: far from the 100 s the job would have slept.
    expect(Date.parse(failed.at) - Date.parse(running.at)).toBeLessThan(20_000);
    await nothingLeft(j.id);
  });

  describe('a 40-deep tree of 255-character names in /outputs', () => {
    let j: Job;
    let end: Job;
    beforeAll(async () => {
      // Each name is 255 characters: the whole path passes PATH_MAX (4096) at depth 16. Built
      // from the bottom up (a folder moved into a new one), as no tool can name its deep end.
      const tree =
        'cd /outputs && echo top > top.txt && n=$(printf "%0255d" 0) && mkdir "$n" && echo deep > "$n/leaf.txt" && ' +
        'for i in $(seq 2 40); do mkdir t && mv "$n" "t/$n" && mv t "$n" || exit 1; done && echo built';
      j = await submit(spec(tree));
      end = await ended(j.id);
    }, 90_000);

    it('runs, and reports how many of its entries the engine left out of the outputs', async () => {
      expect(end.status).toBe('succeeded');
      expect(await stdout(j.id)).toContain('built');
      const note = (await events(j.id)).map((e) => e.reason).find((r) => /could not be read back/.test(r));
      // /outputs, top.txt, 40 folders and leaf.txt were written; the archive stops short of PATH_MAX.
      expect(note).toMatch(/^(\d+) of the 43 files and folders in \/outputs could not be read back/);
      expect(Number(/^(\d+)/.exec(note!)![1])).toBeGreaterThan(20);
    });

    it("is removed with everything else of the run after its end, and no event shows the provider's paths", async () => {
      await nothingLeft(j.id);
      const all = JSON.stringify({ end, events: await events(j.id) });
      expect(all).not.toContain(stateDir);
      expect(all).not.toContain(work);
    });
  });

  it('sweeps, when the agent starts, what runs it no longer holds left behind: a deep folder and a volume', async () => {
    // What a cleanup cut short by a crash leaves: the run's folder (here 40 deep in 255-character
    // names, and root's, as a root job's outputs left by an older agent) and its volume.
    const folder = path.join(stateDir, 'work', 'jobs', 'job_gone.1');
    await mkdir(folder, { recursive: true });
    execFileSync('sh', ['-c', 'n=$(printf "%0255d" 0) && mkdir "$n" && for i in $(seq 2 40); do mkdir t && mv "$n" "t/$n" && mv t "$n"; done'], { cwd: folder });
    await engine.createVolume({
      Name: 'gantry-job_gone-1-outputs',
      Labels: { 'io.gantry.managed': 'true', 'io.gantry.node': nodeId, 'io.gantry.job': 'job_gone', 'io.gantry.epoch': '1' },
    });
    await agent.kill('SIGKILL');
    agent = spawnAgent(['run', '--state-dir', stateDir, '--heartbeat-seconds', '1'], agentEnv(), asProvider);
    await agent.waitForLine(/connected to the coordinator/, 60_000);
    await nothingLeft('job_gone');
  });

  /** An image of the test's own: the test image with a few more Dockerfile lines. */
  async function buildImage(tag: string, lines: string[]) {
    const context = tar.pack();
    context.entry({ name: 'Dockerfile' }, [`FROM ${dockerTestImage}`, ...lines, ''].join('\n'));
    context.finalize();
    const build = (await engine.buildImage(context as unknown as NodeJS.ReadableStream, { t: tag })) as unknown as AsyncIterable<Buffer>;
    for await (const _ of build) {
      /* the engine's progress */
    }
    await pushToTestRegistry(engine, tag);
  }

  it("counts what a job writes to its image's own VOLUME paths against its disk budget", async () => {
    await buildImage(volumeImage, ['VOLUME /data']);
    const j = await submit(spec('head -c 268435456 /dev/zero > /data/big; sleep 100', { image: volumeImage, resources: { cpu: 0.5, memoryMb: 64, diskMb: 64 } }));
    const end = await ended(j.id);
    expect(end.status).toBe('failed');
    expect(end.error).toMatch(/disk budget of 64 MiB/);
    await nothingLeft(j.id);
  });

  it('lets an image that runs as another user than root write its /outputs', async () => {
    await buildImage(userImage, ['USER 1000:1000']);
    const j = await submit(spec('id -u; echo \'{"as": "user"}\' > /outputs/result.json', { image: userImage }));
    const end = await ended(j.id);
    expect(end).toMatchObject({ status: 'succeeded', result: { as: 'user' } });
    expect((await stdout(j.id)).trim()).toBe('1000');
  });

  it('shows the job no secret of the node in its environment, mounts or the paths it can list', async () => {
    const key = JSON.parse(await readFile(path.join(stateDir, 'key.json'), 'utf8')) as { d: string; x: string };
    const nodeFile = await readFile(path.join(stateDir, 'node.json'), 'utf8');
    const j = await submit(
      spec(
        'env; cat /proc/self/mountinfo /proc/mounts; ls -la / /run /var/run /tmp /home 2>&1; ' +
          'for s in /var/run/docker.sock /run/docker.sock /run/containerd/containerd.sock; do [ -e $s ] && echo "SOCKET $s"; done; echo listed',
      ),
    );
    expect(await ended(j.id)).toMatchObject({ status: 'succeeded' });
    const seen = await stdout(j.id);
    expect(seen).toContain('listed');
    expect(seen).toContain('GANTRY_JOB_ID=');
    for (const secret of [key.d, enrollmentToken, stateDir, work, 'GANTRY_AGENT_', 'GANTRY_ENROLLMENT', 'DOCKER_HOST', 'SOCKET ']) {
      expect(seen, secret).not.toContain(secret);
    }
    expect(seen).not.toContain(JSON.parse(nodeFile).coordinatorUrl);
  });
});
