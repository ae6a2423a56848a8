import { mkdtemp, readFile, rename, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { eq } from 'drizzle-orm';
import { importJWK, type CryptoKey } from 'jose';
import { enrollmentTokens } from '../../coordinator/db/schema/index.ts';
import { ApiClient } from '../../shared/client.ts';
import type { EnrollmentToken, Node } from '../../shared/nodes.ts';
import { newAgentKey, signAgentToken } from '../support/agent-identity.ts';
import { runAgentCommand, spawnAgent, startLocalCoordinator, type AgentProcess, type DbKind, type LocalCoordinator } from '../support/agent-process.ts';
import { postgresSkipReason } from '../support/database.ts';
import { createFakeNvidiaSmi, type FakeNvidiaSmi } from '../support/fake-nvidia-smi.ts';
import { until } from '../support/until.ts';

// The agent as its own process against the real coordinator on a loopback port, with a fake
// nvidia-smi on PATH serving rtx-a5000-x2-v13.xml (two RTX A5000).
const fixtureGpus = [
  { uuid: 'GPU-12345678-aaaa-bbbb-cccc-0123456789ab', memoryUsedMb: 22_437, temperatureC: 13 },
  { uuid: 'GPU-12345678-aaaa-bbbb-cccc-0123456789cd', memoryUsedMb: 17_253, temperatureC: 15 },
];


const pgSkip = await postgresSkipReason('agent e2e on PostgreSQL');

for (const kind of ['pglite', 'postgres'] as DbKind[]) {
  describe.skipIf(kind === 'postgres' && pgSkip)(`gantry-agent against a coordinator on ${kind}`, () => {
    let c: LocalCoordinator;
    let fake: FakeNvidiaSmi;
    let work: string;
    let provider: ApiClient;
    const agents: AgentProcess[] = [];
    let env: Record<string, string>;

    beforeAll(async () => {
      c = await startLocalCoordinator(kind, { GANTRY_NODE_TTL_SECONDS: '2' });
      fake = await createFakeNvidiaSmi({ xml: 'rtx-a5000-x2-v13.xml' });
      work = await mkdtemp(path.join(tmpdir(), 'gantry-agent-e2e-'));
      env = { PATH: `${fake.path}${path.delimiter}${process.env.PATH}`, GANTRY_AGENT_STATE_DIR: '' };
      const account = await c.admin.post<{ id: string }>('/v1/accounts', { name: `provider-${kind}`, kind: 'provider' });
      const { key } = await c.admin.post<{ key: string }>(`/v1/accounts/${account.id}/keys`, { scopes: ['provider'] });
      provider = new ApiClient({ baseUrl: c.url, token: key });
    });
    afterAll(async () => {
      for (const a of agents) await a.kill();
      await c?.close();
      await fake?.cleanup();
      if (work) await rm(work, { recursive: true, force: true });
    });

    const newToken = (body: Record<string, unknown> = {}) => provider.post<EnrollmentToken>('/v1/enrollment-tokens', body);
    const nodes = async () => (await provider.get<{ items: Node[] }>('/v1/nodes')).items;
    const agent = (args: string[]) => {
      const a = spawnAgent(args, env);
      agents.push(a);
      return a;
    };

    it('joins with two GPUs, heartbeats with their metrics, goes offline when killed and online again when restarted', async () => {
      const stateDir = path.join(work, 'node-a');
      const { token } = await newToken({ labels: { site: 'e2e' } });
      const first = agent(['join', '--coordinator', c.url, '--token', token, '--state-dir', stateDir, '--name', 'rig-a', '--label', 'rack=r1', '--price-gpu-hour', '0.9', '--run', '--heartbeat-seconds', '0.5']);
      await first.waitForLine(/^Joined .* as node node_\w+ \(rig-a\) with 2 GPUs/);
      await first.waitForLine(/connected to the coordinator/);

      // The state dir holds the key pair and the node, readable by the agent's user only.
      for (const f of ['key.json', 'node.json']) expect((await stat(path.join(stateDir, f))).mode & 0o777).toBe(0o600);
      const saved = JSON.parse(await readFile(path.join(stateDir, 'node.json'), 'utf8'));
      expect(saved.coordinatorName).toBe(c.coordinator.deps.config.name);

      const node = await until('metrics from both GPUs', async () => {
        const [n] = await nodes();
        return n?.gpus.every((g) => g.metrics.memoryUsedMb !== null) && n.metrics ? n : null;
      });
      expect(node).toMatchObject({ id: saved.nodeId, name: 'rig-a', status: 'online', labels: { site: 'e2e', rack: 'r1' }, priceGpuHour: 0.9 });
      expect(node.gpus.map((g) => ({ uuid: g.uuid, memoryUsedMb: g.metrics.memoryUsedMb, temperatureC: g.metrics.temperatureC }))).toEqual(fixtureGpus);
      expect(node.gpus.map((g) => [g.model, g.memoryMb, g.driverVersion, g.cudaVersion])).toEqual([
        ['NVIDIA RTX A5000', 24_564, '590.44.01', '13.1'],
        ['NVIDIA RTX A5000', 24_564, '590.44.01', '13.1'],
      ]);
      // Heartbeats keep coming.
      const seen = Date.parse(node.lastHeartbeatAt!);
      await until('a later heartbeat', async () => Date.parse((await nodes())[0]!.lastHeartbeatAt!) > seen);

      await first.kill('SIGKILL');
      await until('the node to go offline', async () => (await nodes())[0]!.status === 'offline');

      const again = agent(['run', '--state-dir', stateDir, '--heartbeat-seconds', '0.5']);
      await again.waitForLine(/connected to the coordinator/);
      await until('the node to come back online', async () => (await nodes())[0]!.status === 'online');
      expect((await nodes()).map((n) => n.id)).toEqual([saved.nodeId]);

      // A second join on the enrolled machine makes no second node.
      const { token: spare } = await newToken();
      const second = await runAgentCommand(['join', '--coordinator', c.url, '--token', spare, '--state-dir', stateDir], env);
      expect(second.code).toBe(0);
      expect(second.stdout.join('\n')).toMatch(new RegExp(`already enrolled as node ${saved.nodeId}`));
      expect((await nodes()).map((n) => n.id)).toEqual([saved.nodeId]);

      // The coordinator goes away: one line, backoff, then back.
      await c.stop();
      await again.waitForLine(/coordinator is unreachable/);
      await new Promise((r) => setTimeout(r, 2_500));
      await c.start();
      await again.waitForLine(/reconnected to the coordinator after \d+ failed tries/, 30_000);
      expect(again.stdout.filter((l) => /unreachable/.test(l))).toHaveLength(1);
      await again.kill('SIGTERM');
      expect((await again.exited).code).toBe(0);
    });

    it("re-reports hardware that changed under it: the node's GPUs and capacity follow", async () => {
      const stateDir = path.join(work, 'node-swap');
      // This machine's nvidia-smi starts as the four-K80 fixture and then answers as the V100 one:
      // the K80s gone, a V100 in their place. (Each test's machine has GPUs of its own.)
      const swapping = await createFakeNvidiaSmi({ xml: 'tesla-k80-x4-azure-v10.xml' });
      const v100 = await createFakeNvidiaSmi({ xml: 'tesla-v100-pcie-32gb-v11.xml' });
      try {
        const { token } = await newToken();
        const joined = spawnAgent(['join', '--coordinator', c.url, '--token', token, '--state-dir', stateDir, '--name', 'swap', '--run', '--heartbeat-seconds', '0.5'], {
          ...env,
          PATH: `${swapping.path}${path.delimiter}${process.env.PATH}`,
        });
        agents.push(joined);
        await joined.waitForLine(/connected to the coordinator/);
        const nodeId = JSON.parse(await readFile(path.join(stateDir, 'node.json'), 'utf8')).nodeId as string;
        const gpusOf = async () => (await provider.get<Node>(`/v1/nodes/${nodeId}`)).gpus.map((g) => g.model);
        expect(await gpusOf()).toEqual(['Tesla K80', 'Tesla K80', 'Tesla K80', 'Tesla K80']);

        await rename(path.join(v100.dir, 'config.json'), path.join(swapping.dir, 'config.json.new'));
        await rename(path.join(swapping.dir, 'config.json.new'), path.join(swapping.dir, 'config.json'));
        await joined.waitForLine(/hardware changed: 1 GPU, gone GPU-c3b26f7a-8dcb-619c-fa1b-8029265a4db0, .*, new GPU-e77ce5d8-8b63-c936-3c1b-839d45bcd0f2/);
        await until('the V100 in place of the K80s', async () => (await gpusOf()).join() === 'Tesla V100-PCIE-32GB');
        const node = await provider.get<Node>(`/v1/nodes/${nodeId}`);
        expect(node.gpus.map((g) => [g.memoryMb, g.driverVersion, g.cudaVersion])).toEqual([[32_510, '460.39', '11.2']]);
        await joined.kill('SIGTERM');
      } finally {
        await swapping.cleanup();
        await v100.cleanup();
      }
    });

    it("refuses forged and expired agent tokens for the node, with problem+json", async () => {
      const stateDir = path.join(work, 'node-b');
      const { token } = await newToken();
      const t4 = await createFakeNvidiaSmi({ xml: 'tesla-t4-v11.xml' });
      const join = await runAgentCommand(['join', '--coordinator', c.url, '--token', token, '--state-dir', stateDir], {
        ...env,
        PATH: `${t4.path}${path.delimiter}${process.env.PATH}`,
      }).finally(() => t4.cleanup());
      expect(join.code).toBe(0);
      const saved = JSON.parse(await readFile(path.join(stateDir, 'node.json'), 'utf8'));
      const jwk = JSON.parse(await readFile(path.join(stateDir, 'key.json'), 'utf8'));
      const ownKey = (await importJWK(jwk, 'EdDSA')) as CryptoKey;
      const aud = saved.coordinatorName;
      const now = Math.floor(Date.now() / 1000);
      const heartbeat = (t: string) =>
        fetch(new URL('/v1/agent/heartbeat', c.url), {
          method: 'POST',
          headers: { authorization: `Bearer ${t}`, 'content-type': 'application/json' },
          body: JSON.stringify({ jobs: [], metrics: { host: { loadAvg1: 0, memoryUsedMb: 1 }, gpus: [] } }),
        });
      const good = await heartbeat(await signAgentToken(ownKey, { sub: saved.nodeId, aud }));
      expect(good.status).toBe(200);
      const forged = await heartbeat(await signAgentToken((await newAgentKey()).privateKey, { sub: saved.nodeId, aud }));
      const expired = await heartbeat(await signAgentToken(ownKey, { sub: saved.nodeId, aud, iatSeconds: now - 300, expSeconds: now - 240 }));
      for (const res of [forged, expired]) {
        expect(res.status).toBe(401);
        expect(res.headers.get('content-type')).toMatch(/application\/problem\+json/);
      }
      expect((await forged.json()).detail).toMatch(/not signed by this node's key/);
      expect((await expired.json()).detail).toMatch(/expired/);
    });

    it('refuses a bad enrollment token or hardware report with problem+json, and stores nothing', async () => {
      const a10g = await createFakeNvidiaSmi({ xml: 'a10g-v11.xml' });
      const report = JSON.parse(
        (await runAgentCommand(['hardware', '--json'], { ...env, PATH: `${a10g.path}${path.delimiter}${process.env.PATH}` }).finally(() => a10g.cleanup())).stdout.join('\n'),
      );
      const { token } = await newToken();
      const { publicJwk } = await newAgentKey();
      const register = (body: Record<string, unknown>) =>
        fetch(new URL('/v1/agent/register', c.url), {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify({ token, publicKey: publicJwk, hardware: report, ...body }),
        });
      const before = (await nodes()).length;
      const gpu = report.gpus[0];
      for (const [body, status] of [
        [{ token: 'gnt_nope' }, 401],
        [{ hardware: { ...report, gpus: [{ ...gpu, memoryMb: -24_564 }] } }, 400],
        // Far past the 64 units a node may have, and within the default body cap (the integration
        // tests send 10,000 under a larger cap).
        [{ hardware: { ...report, gpus: Array.from({ length: 2_000 }, (_, i) => ({ ...gpu, id: `G${i}`, index: 0, pciBusId: null })) } }, 400],
        [{ hardware: { ...report, host: { ...report.host, memoryMb: '64 GiB' } } }, 400],
      ] as const) {
        const res = await register(body);
        expect(res.status).toBe(status);
        expect(res.headers.get('content-type')).toMatch(/application\/problem\+json/);
      }
      expect((await nodes()).length).toBe(before);
      // The same body, untouched, is taken: the refusals were for what was wrong.
      expect((await register({})).status).toBe(201);
    });

    it('says why a join fails in one line and exits 1: used up, expired, unknown token, plain http to another host', async () => {
      const stateDir = (n: string) => path.join(work, `refused-${n}`);
      const used = await newToken({ uses: 1 });
      const other = await createFakeNvidiaSmi({ xml: 'tesla-p100-pcie-16gb-v11.xml' });
      const otherEnv = { ...env, PATH: `${other.path}${path.delimiter}${process.env.PATH}` };
      expect((await runAgentCommand(['join', '--coordinator', c.url, '--token', used.token, '--state-dir', stateDir('ok')], otherEnv)).code).toBe(0);
      const expired = await newToken({ expiresInSeconds: 60 });
      await c.database.db.update(enrollmentTokens).set({ expiresAt: new Date(Date.now() - 1000) }).where(eq(enrollmentTokens.id, expired.id));
      const nodesBefore = (await nodes()).length;
      const cases: [string, string[], RegExp][] = [
        ['used up', ['--coordinator', c.url, '--token', used.token], /used up/],
        ['expired', ['--coordinator', c.url, '--token', expired.token], /expired/],
        ['unknown', ['--coordinator', c.url, '--token', `gnt_${'a'.repeat(12)}_${'b'.repeat(43)}`], /unknown/],
        ['plain http elsewhere', ['--coordinator', 'http://192.0.2.10:8080', '--token', used.token], /refusing plain http/],
      ];
      for (const [what, args, why] of cases) {
        const r = await runAgentCommand(['join', ...args, '--state-dir', stateDir(what.replace(/\W/g, '-'))], otherEnv);
        expect(r.code, what).toBe(1);
        const lines = r.stderr.filter((l) => l.trim());
        expect(lines, what).toHaveLength(1);
        expect(lines[0], what).toMatch(why);
        expect(lines[0], what).not.toMatch(/\bat .*\.ts:\d+/);
      }
      expect((await nodes()).length).toBe(nodesBefore);
      await other.cleanup();
    });

    it('writes a systemd unit that runs the agent with its state dir', async () => {
      const stateDir = path.join(work, 'node-a');
      const unitPath = path.join(work, 'units', 'gantry-agent.service');
      const r = await runAgentCommand(['install-service', '--state-dir', stateDir, '--unit-path', unitPath], env);
      expect(r.code).toBe(0);
      const unit = await readFile(unitPath, 'utf8');
      expect(unit).toMatch(/^ExecStart=.*gantry-agent\.js run --state-dir /m);
      // The rules that isolate bridge jobs, as root before each start (they do not survive a reboot).
      expect(unit).toMatch(/^ExecStartPre=\+.*gantry-agent\.js network-rules$/m);
      expect(unit).toContain(stateDir);
      expect(unit).toMatch(/^Restart=always$/m);
      expect(unit).toMatch(/^WantedBy=multi-user.target$/m);
      const notEnrolled = await runAgentCommand(['install-service', '--state-dir', path.join(work, 'nothing'), '--unit-path', unitPath], env);
      expect(notEnrolled.code).toBe(1);
      expect(notEnrolled.stderr.join('\n')).toMatch(/join first/);
    });
  });
}
