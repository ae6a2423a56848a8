import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { eq, sql } from 'drizzle-orm';
import { enrollmentTokens } from '../../coordinator/db/schema/index.ts';
import { registerNode } from '../../coordinator/nodes/registry.ts';
import { ApiRequestError, type ApiClient } from '../../shared/client.ts';
import type { HardwareReport } from '../../shared/hardware.ts';
import type { EnrollmentToken, Node, RegisteredNode } from '../../shared/nodes.ts';
import { a5000Machine, newAgentKey } from '../support/agent-identity.ts';
import { dbSkipReason, startHarness, type Harness } from '../support/harness.ts';

let machines = 0;
const nextMachine = (gpus = 2) => a5000Machine(String(++machines), gpus);

describe.skipIf(dbSkipReason)('enrollment', () => {
  let h: Harness;
  beforeAll(async () => {
    // Room for a 10,000-GPU report, so that the schema's bound refuses it rather than the body cap.
    h = await startHarness({ GANTRY_BODY_LIMIT_BYTES: String(8 * 1024 * 1024) });
  });
  afterAll(async () => h?.close());

  const count = async (table: 'nodes' | 'gpus') => {
    const rows = await h.testDb.database.rows<{ n: unknown }>(sql.raw(`select count(*) as n from ${table}`));
    return Number(rows[0]!.n);
  };

  async function register(token: string, hardware: HardwareReport, extra: Record<string, unknown> = {}) {
    const { publicJwk } = await newAgentKey();
    return h.client().post<RegisteredNode>('/v1/agent/register', { token, publicKey: publicJwk, hardware, ...extra });
  }

  const refusal = async (p: Promise<unknown>) => {
    const err = await p.then(
      () => null,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(ApiRequestError);
    return err as ApiRequestError;
  };

  const newToken = (api: ApiClient, body: Record<string, unknown> = {}) => api.post<EnrollmentToken>('/v1/enrollment-tokens', body);

  it('creates a token once, and a registration with it makes a node of that provider with its GPUs', async () => {
    const provider = await h.newAccount('provider');
    const created = await newToken(provider.api, { uses: 1, expiresInSeconds: 600, labels: { site: 'lab' } });
    expect(created.token).toMatch(/^gnt_/);
    expect(created.usesLeft).toBe(1);
    expect(Date.parse(created.expiresAt) - Date.now()).toBeGreaterThan(590_000);

    const hardware = nextMachine();
    const answer = await register(created.token, hardware, {
      name: 'rig-one',
      labels: { tier: 'gold' },
      region: 'eu-west',
      priceGpuHour: 0.85,
      priceCpuHour: 0.02,
      agentVersion: '0.1.0',
    });
    expect(answer.nodeId).toMatch(/^node_/);
    expect(answer.coordinatorName).toBe(h.coordinator.deps.config.name);

    const { items } = await provider.api.get<{ items: Node[] }>('/v1/nodes');
    expect(items).toHaveLength(1);
    const node = items[0]!;
    expect(node).toMatchObject({
      id: answer.nodeId,
      name: 'rig-one',
      status: 'online',
      labels: { site: 'lab', tier: 'gold' },
      region: 'eu-west',
      priceGpuHour: 0.85,
      priceCpuHour: 0.02,
      capacity: { cpu: 16, memoryMb: 64_000, diskMb: 500_000 },
      allocated: { cpu: 0, memoryMb: 0, diskMb: 0 },
    });
    expect(node.gpus.map((g) => [g.uuid, g.model, g.memoryMb, g.driverVersion, g.cudaVersion])).toEqual(
      hardware.gpus.map((g) => [g.uuid, 'NVIDIA RTX A5000', 24_564, '590.44.01', '13.1']),
    );

    // Used up now.
    const err = await refusal(register(created.token, nextMachine()));
    expect(err.status).toBe(401);
    expect(err.problem?.detail).toMatch(/used up/);
  });

  it('lets a token serve as many registrations as it has uses', async () => {
    const provider = await h.newAccount('provider');
    const { token } = await newToken(provider.api, { uses: 2 });
    await register(token, nextMachine());
    await register(token, nextMachine());
    const before = await count('nodes');
    expect((await refusal(register(token, nextMachine()))).problem?.detail).toMatch(/used up/);
    expect(await count('nodes')).toBe(before);
    const { items } = await provider.api.get<{ items: Node[] }>('/v1/nodes');
    expect(items).toHaveLength(2);
  });

  it('refuses an expired token and an unknown one with a clear reason', async () => {
    const provider = await h.newAccount('provider');
    const { token } = await newToken(provider.api, { expiresInSeconds: 60 });
    const { publicJwk } = await newAgentKey();
    const later = new Date(Date.now() + 61_000);
    const expired = await registerNode(
      h.coordinator.deps,
      { token, publicKey: publicJwk as never, hardware: nextMachine() },
      later,
    ).catch((e: Error) => e);
    expect((expired as Error).message).toMatch(/expired/);

    const unknown = await refusal(register(`gnt_${'a'.repeat(12)}_${'b'.repeat(43)}`, nextMachine()));
    expect(unknown.status).toBe(401);
    expect(unknown.problem?.detail).toMatch(/unknown/);
    const garbage = await refusal(register('not-a-token', nextMachine()));
    expect(garbage.status).toBe(401);
    // The secret half must match too, not just the prefix.
    const forged = await refusal(register(`${token.slice(0, 17)}${'x'.repeat(43)}`, nextMachine()));
    expect(forged.problem?.detail).toMatch(/unknown/);
  });

  it("lists a provider's tokens and revokes one: no machine joins with it after, and another provider sees neither", async () => {
    const provider = await h.newAccount('provider');
    const other = await h.newAccount('provider');
    const kept = await newToken(provider.api, { uses: 3, labels: { rack: 'a' } });
    const dropped = await newToken(provider.api, { uses: 2 });
    await register(dropped.token, nextMachine());

    const listed = await provider.api.get<{ items: Record<string, unknown>[]; nextCursor: string | null }>('/v1/enrollment-tokens');
    expect(listed.items.map((t) => t.id)).toEqual([kept.id, dropped.id]);
    expect(listed.items[1]).toEqual({
      id: dropped.id,
      prefix: dropped.token.split('_')[1],
      usesLeft: 1,
      expiresAt: dropped.expiresAt,
      labels: {},
      createdAt: expect.any(String),
      revokedAt: null,
    });
    expect(JSON.stringify(listed)).not.toContain(dropped.token.split('_')[2]);
    expect((await other.api.get<{ items: unknown[] }>('/v1/enrollment-tokens')).items).toEqual([]);

    const theirs = await other.api.raw('DELETE', `/v1/enrollment-tokens/${dropped.id}`);
    expect(theirs.status).toBe(404);
    const revoked = await provider.api.delete<{ id: string; revokedAt: string | null }>(`/v1/enrollment-tokens/${dropped.id}`);
    expect(revoked).toMatchObject({ id: dropped.id, revokedAt: expect.any(String) });
    // Revoking again answers the same.
    expect((await provider.api.delete<{ revokedAt: string }>(`/v1/enrollment-tokens/${dropped.id}`)).revokedAt).toBe(revoked.revokedAt);

    const nodesBefore = await count('nodes');
    const refused = await refusal(register(dropped.token, nextMachine()));
    expect(refused.status).toBe(401);
    expect(refused.problem?.detail).toMatch(/revoked/);
    expect(await count('nodes')).toBe(nodesBefore);
    expect((await register(kept.token, nextMachine())).nodeId).toMatch(/^node_/);
    expect((await h.client().raw('GET', '/v1/enrollment-tokens')).status).toBe(401);
    const client = await h.newAccount('client');
    expect((await client.api.raw('DELETE', `/v1/enrollment-tokens/${kept.id}`)).status).toBe(403);
  });

  it('needs a provider key to create tokens, and validates the request', async () => {
    const client = await h.newAccount('client');
    expect((await refusal(newToken(client.api))).status).toBe(403);
    expect((await refusal(newToken(h.client()))).status).toBe(401);
    const provider = await h.newAccount('provider');
    for (const body of [{ uses: 0 }, { expiresInSeconds: 5 }, { uses: 1.5 }, { extra: true }, { labels: { 'bad key!': 'x' } }]) {
      const err = await refusal(newToken(provider.api, body));
      expect(err.status).toBe(400);
      expect(err.problem?.type).toBe('urn:gantry:problem:validation');
    }
  });

  it('refuses bad hardware reports with problem+json, stores nothing and keeps the use', async () => {
    const provider = await h.newAccount('provider');
    const { token, id } = await newToken(provider.api);
    const good = nextMachine();
    const gpu = good.gpus[0]!;
    const bad: unknown[] = [
      { ...good, gpus: [{ ...gpu, memoryMb: -1 }] },
      { ...good, host: { ...good.host, memoryMb: -64 } },
      { ...good, gpus: Array.from({ length: 10_000 }, (_, i) => ({ ...gpu, id: `GPU-${i}`, uuid: `GPU-${i}`, index: i })) },
      { ...good, gpus: [{ ...gpu, memoryMb: '24564 MiB' }] },
      { ...good, gpus: [{ ...gpu, index: 'zero' }] },
      { ...good, host: { ...good.host, cpuCores: '16' } },
      { ...good, gpus: [gpu, gpu] },
      'lots of GPUs',
    ];
    const nodesBefore = await count('nodes');
    const gpusBefore = await count('gpus');
    for (const hardware of bad) {
      const { publicJwk } = await newAgentKey();
      const res = await h.fetch('/v1/agent/register', {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ token, publicKey: publicJwk, hardware }),
      });
      expect(res.status).toBe(400);
      expect(res.headers.get('content-type')).toMatch(/application\/problem\+json/);
      const problem = await res.json();
      expect(problem.status).toBe(res.status);
    }
    // A key that is not an Ed25519 public key, and unknown fields.
    for (const publicKey of [{ kty: 'RSA', n: 'x', e: 'AQAB' }, { kty: 'OKP', crv: 'Ed25519', x: 'short' }]) {
      expect((await refusal(h.client().post('/v1/agent/register', { token, publicKey, hardware: good }))).status).toBe(400);
    }
    const { publicJwk } = await newAgentKey();
    expect((await refusal(h.client().post('/v1/agent/register', { token, publicKey: publicJwk, hardware: good, admin: true }))).status).toBe(400);

    expect(await count('nodes')).toBe(nodesBefore);
    expect(await count('gpus')).toBe(gpusBefore);
    const [row] = await h.testDb.database.db.select().from(enrollmentTokens).where(eq(enrollmentTokens.id, id));
    expect(row!.usesLeft).toBe(1);
    // Still good for a proper report.
    await register(token, good);
  });

  it('refuses a GPU that another node already holds, and logs it; a retired node lets it go', async () => {
    const alice = await h.newAccount('provider');
    const bob = await h.newAccount('provider');
    const machine = nextMachine();
    const first = await register((await newToken(alice.api)).token, machine);

    const bobToken = await newToken(bob.api);
    const nodesBefore = await count('nodes');
    const logged: { msg: string; fields?: Record<string, unknown> }[] = [];
    const log = h.coordinator.deps.log;
    h.coordinator.deps.log = { ...log, warn: (msg, fields) => logged.push({ msg, ...(fields ? { fields } : {}) }) };
    const theft = await refusal(register(bobToken.token, { ...nextMachine(), gpus: [machine.gpus[1]!] })).finally(() => {
      h.coordinator.deps.log = log;
    });
    expect(logged.map((l) => l.msg)).toEqual(['gpu claimed twice: registration refused']);
    expect(JSON.stringify(logged[0]!.fields)).toContain(first.nodeId);
    expect(theft.status).toBe(409);
    expect(theft.problem?.detail).toContain(machine.gpus[1]!.uuid);
    // Another tenant's node is not named.
    expect(theft.problem?.detail).not.toContain(first.nodeId);
    expect(await count('nodes')).toBe(nodesBefore);

    // The same provider joining the machine again (a wiped state dir) is told which node has it.
    const again = await refusal(register((await newToken(alice.api)).token, machine));
    expect(again.status).toBe(409);
    expect(again.problem?.detail).toContain(first.nodeId);

    await alice.api.delete(`/v1/nodes/${first.nodeId}`);
    const rejoined = await register((await newToken(alice.api)).token, machine);
    expect(rejoined.nodeId).not.toBe(first.nodeId);
    // The refused registration did not spend Bob's token.
    await register(bobToken.token, nextMachine());
  });

  it('lets only one of two simultaneous registrations claim a GPU', async () => {
    // Two providers, so that nothing but the GPU claim (no shared token row) orders the two.
    const tokens = await Promise.all([h.newAccount('provider'), h.newAccount('provider')].map(async (a) => (await newToken((await a).api)).token));
    const machine = nextMachine();
    const results = await Promise.allSettled(tokens.map((t) => register(t, machine)));
    expect(results.filter((r) => r.status === 'fulfilled')).toHaveLength(1);
    const failed = results.find((r) => r.status === 'rejected') as PromiseRejectedResult;
    expect((failed.reason as ApiRequestError).status).toBe(409);
  });
});
