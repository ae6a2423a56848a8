// Every route, tried as an attacker would (unkey's per-route 401/403 tests, as one table): no
// credential, a wrong one, a revoked one, the wrong scope, and another tenant's object. The table
// is keyed by route and checked against /openapi.json and the app's own route list, so a route
// added without its row fails this suite. Routes outside the document are listed by hand.
import { createHash } from 'node:crypto';
import { eq } from 'drizzle-orm';
import tarStream from 'tar-stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createApp } from '../../coordinator/app.ts';
import { nodes } from '../../coordinator/db/schema/index.ts';
import type { Job } from '../../shared/jobs.ts';
import { createTestNode, leaseTo, type TestNode } from '../support/agent-fixture.ts';
import { a5000Machine, newAgentKey, signAgentToken } from '../support/agent-identity.ts';
import { jobSpec } from '../support/factories.ts';
import { dbSkipReason, startHarness, type Harness } from '../support/harness.ts';

/** The objects of the tenant under attack (A), and what the attacker (B) holds of its own. */
interface World {
  h: Harness;
  accountA: string;
  /** A's job, running on A's node at epoch 1, naming A's blob as an input, with outputs stored. */
  jobA: string;
  nodeA: TestNode;
  blobA: string;
  /** One of A's API keys (not the ones the probes use). */
  keyIdA: string;
  /** One of A's enrollment tokens. */
  tokenIdA: string;
}

interface Req {
  path: string;
  body?: BodyInit;
  headers?: Record<string, string>;
}

/**
 * How the attacker's request on A's object must be answered: 404 as if it did not exist, or a
 * check of the answer. An agent route is tried at the job's lease epoch and at another one: the
 * answer must not tell them apart (an oracle for another node's lease).
 */
type TenantProbe = { req: (w: World, epoch: number) => Req; expect: 404 | ((res: Response, w: World) => Promise<void>) };

type Row =
  | { auth: 'public'; why: string; req?: (w: World) => Req }
  /** An API key; scope is what the route accepts ('any' for any valid key). */
  | { auth: 'key'; scope: 'client' | 'provider' | 'admin' | 'client or provider' | 'any'; tenant: TenantProbe | { none: string } }
  /** The agent's own signed token. */
  | { auth: 'agent'; tenant: TenantProbe | { none: string } }
  /** An enrollment token in the body. */
  | { auth: 'enrollment' };

const json = (body: unknown): Pick<Req, 'body' | 'headers'> => ({ body: JSON.stringify(body), headers: { 'content-type': 'application/json' } });
const notListed = (what: (w: World) => string) => async (res: Response, w: World) => {
  expect(res.status).toBe(200);
  expect(await res.text()).not.toContain(what(w));
};
const metrics = { host: { loadAvg1: 0.1, memoryUsedMb: 100 }, gpus: [] };

/**
 * The table. A key is "METHOD /path" as /openapi.json writes it; a row for something that is not
 * a route of its own (the follow of a log) names its route after a space and a parenthesis.
 */
const matrix: Record<string, Row> = {
  'GET /healthz': { auth: 'public', why: 'liveness, for load balancers' },
  'GET /readyz': { auth: 'public', why: 'readiness, for load balancers' },
  'GET /.well-known/jwks.json': { auth: 'public', why: 'the public keys that verify leases' },
  'GET /openapi.json': { auth: 'public', why: 'the API description' },
  'GET /metrics': { auth: 'public', why: 'Prometheus counters, no tenant data' },
  'GET /': { auth: 'public', why: 'the dashboard page (it calls the API with the key its user gives)' },
  'GET /dashboard/app.js': { auth: 'public', why: 'dashboard asset' },
  'GET /dashboard/style.css': { auth: 'public', why: 'dashboard asset' },
  'GET /dashboard/icon.svg': { auth: 'public', why: 'dashboard asset' },
  'GET /v1/pool': { auth: 'public', why: 'the pool is public by design: counts and prices, no node ids' },
  'GET /v1/pool/history': { auth: 'public', why: 'the pool is public by design' },

  'POST /v1/accounts': { auth: 'key', scope: 'admin', tenant: { none: 'admin only: there is no tenant below the operator' } },
  'POST /v1/accounts/{id}/keys': { auth: 'key', scope: 'any', tenant: { req: (w) => ({ path: `/v1/accounts/${w.accountA}/keys`, ...json({ scopes: ['client'] }) }), expect: 404 } },
  'GET /v1/accounts/{id}/keys': { auth: 'key', scope: 'any', tenant: { req: (w) => ({ path: `/v1/accounts/${w.accountA}/keys` }), expect: 404 } },
  'DELETE /v1/keys/{id}': { auth: 'key', scope: 'any', tenant: { req: (w) => ({ path: `/v1/keys/${w.keyIdA}?cascade=true` }), expect: 404 } },

  'POST /v1/jobs': { auth: 'key', scope: 'client', tenant: { none: "creates the caller's own job" } },
  'GET /v1/jobs': { auth: 'key', scope: 'client', tenant: { req: () => ({ path: '/v1/jobs?limit=200' }), expect: notListed((w) => w.jobA) } },
  'GET /v1/jobs/{id}': { auth: 'key', scope: 'client', tenant: { req: (w) => ({ path: `/v1/jobs/${w.jobA}` }), expect: 404 } },
  'POST /v1/jobs/{id}/cancel': { auth: 'key', scope: 'client', tenant: { req: (w) => ({ path: `/v1/jobs/${w.jobA}/cancel` }), expect: 404 } },
  'GET /v1/jobs/{id}/events': { auth: 'key', scope: 'client', tenant: { req: (w) => ({ path: `/v1/jobs/${w.jobA}/events` }), expect: 404 } },
  'GET /v1/jobs/{id}/tasks': { auth: 'key', scope: 'client', tenant: { req: (w) => ({ path: `/v1/jobs/${w.jobA}/tasks` }), expect: 404 } },
  'GET /v1/jobs/{id}/logs': { auth: 'key', scope: 'client', tenant: { req: (w) => ({ path: `/v1/jobs/${w.jobA}/logs` }), expect: 404 } },
  'GET /v1/jobs/{id}/logs (follow=1: server-sent events)': {
    auth: 'key',
    scope: 'client',
    tenant: { req: (w) => ({ path: `/v1/jobs/${w.jobA}/logs?follow=1`, headers: { accept: 'text/event-stream' } }), expect: 404 },
  },
  'GET /v1/jobs/{id}/outputs': { auth: 'key', scope: 'client', tenant: { req: (w) => ({ path: `/v1/jobs/${w.jobA}/outputs` }), expect: 404 } },
  'POST /v1/jobs/{id}/service-tokens': { auth: 'key', scope: 'client', tenant: { req: (w) => ({ path: `/v1/jobs/${w.jobA}/service-tokens`, ...json({ name: 'x' }) }), expect: 404 } },
  'GET /v1/jobs/{id}/service-tokens': { auth: 'key', scope: 'client', tenant: { req: (w) => ({ path: `/v1/jobs/${w.jobA}/service-tokens` }), expect: 404 } },
  'DELETE /v1/jobs/{id}/service-tokens/{tokenId}': {
    auth: 'key',
    scope: 'client',
    tenant: { req: (w) => ({ path: `/v1/jobs/${w.jobA}/service-tokens/stok_00000000000000000000aa` }), expect: 404 },
  },
  'POST /v1/jobs/dry-run': { auth: 'key', scope: 'client', tenant: { none: 'the open market: every node that could take the job' } },
  'GET /v1/offers': { auth: 'key', scope: 'client', tenant: { none: 'the open market: free capacity of every node' } },
  'POST /v1/blobs': { auth: 'key', scope: 'client', tenant: { none: "stores the caller's own upload" } },
  'GET /v1/blobs/{digest}': { auth: 'key', scope: 'client', tenant: { req: (w) => ({ path: `/v1/blobs/${w.blobA}` }), expect: 404 } },
  'GET /v1/usage': { auth: 'key', scope: 'client or provider', tenant: { req: () => ({ path: '/v1/usage' }), expect: notListed((w) => w.jobA) } },
  'POST /v1/accounts/{id}/credits': { auth: 'key', scope: 'admin', tenant: { none: 'admin only: the operator credits an account' } },
  'POST /v1/accounts/{id}/payouts': { auth: 'key', scope: 'admin', tenant: { none: 'admin only: the operator records a payout' } },
  'POST /v1/accounts/{id}/adjustments': { auth: 'key', scope: 'admin', tenant: { none: 'admin only: a compensating transfer' } },
  'PUT /v1/accounts/{id}/credit-limit': { auth: 'key', scope: 'admin', tenant: { none: "admin only: how far below zero a client may go" } },
  'GET /v1/balance': { auth: 'key', scope: 'any', tenant: { req: () => ({ path: '/v1/balance' }), expect: notListed((w) => w.accountA) } },
  'GET /v1/ledger': { auth: 'key', scope: 'any', tenant: { req: () => ({ path: '/v1/ledger' }), expect: notListed((w) => w.jobA) } },

  'POST /v1/enrollment-tokens': { auth: 'key', scope: 'provider', tenant: { none: "creates the caller's own token" } },
  'GET /v1/enrollment-tokens': { auth: 'key', scope: 'provider', tenant: { req: () => ({ path: '/v1/enrollment-tokens?limit=200' }), expect: notListed((w) => w.tokenIdA) } },
  'DELETE /v1/enrollment-tokens/{id}': { auth: 'key', scope: 'provider', tenant: { req: (w) => ({ path: `/v1/enrollment-tokens/${w.tokenIdA}` }), expect: 404 } },
  'GET /v1/nodes': { auth: 'key', scope: 'provider', tenant: { req: () => ({ path: '/v1/nodes' }), expect: notListed((w) => w.nodeA.nodeId) } },
  'GET /v1/nodes/{id}': { auth: 'key', scope: 'provider', tenant: { req: (w) => ({ path: `/v1/nodes/${w.nodeA.nodeId}` }), expect: 404 } },
  'PATCH /v1/nodes/{id}': { auth: 'key', scope: 'provider', tenant: { req: (w) => ({ path: `/v1/nodes/${w.nodeA.nodeId}`, ...json({ priceGpuHour: 99 }) }), expect: 404 } },
  'DELETE /v1/nodes/{id}': { auth: 'key', scope: 'provider', tenant: { req: (w) => ({ path: `/v1/nodes/${w.nodeA.nodeId}` }), expect: 404 } },
  'GET /v1/nodes/{id}/metrics': { auth: 'key', scope: 'provider', tenant: { req: (w) => ({ path: `/v1/nodes/${w.nodeA.nodeId}/metrics` }), expect: 404 } },
  'POST /v1/nodes/{id}/drain': { auth: 'key', scope: 'provider', tenant: { req: (w) => ({ path: `/v1/nodes/${w.nodeA.nodeId}/drain` }), expect: 404 } },
  'POST /v1/nodes/{id}/undrain': { auth: 'key', scope: 'provider', tenant: { req: (w) => ({ path: `/v1/nodes/${w.nodeA.nodeId}/undrain` }), expect: 404 } },

  'POST /v1/agent/register': { auth: 'enrollment' },
  'POST /v1/agent/heartbeat': {
    auth: 'agent',
    tenant: {
      // Naming another node's job in a heartbeat renews nothing: the answer revokes it.
      req: (w, epoch) => ({ path: '/v1/agent/heartbeat', ...json({ jobs: [{ jobId: w.jobA, epoch }], metrics }) }),
      expect: async (res, w) => {
        expect(res.status).toBe(200);
        const answer = (await res.json()) as { leases: { jobId: string }[]; revoked: { jobId: string }[] };
        expect(answer.leases.map((l) => l.jobId)).not.toContain(w.jobA);
        expect(answer.revoked.map((l) => l.jobId)).toContain(w.jobA);
      },
    },
  },
  'GET /v1/agent/work': { auth: 'agent', tenant: { req: () => ({ path: '/v1/agent/work?wait=0' }), expect: notListed((w) => w.jobA) } },
  'POST /v1/agent/jobs/{id}/running': { auth: 'agent', tenant: { req: (w, epoch) => ({ path: `/v1/agent/jobs/${w.jobA}/running`, ...json({ epoch }) }), expect: 404 } },
  'POST /v1/agent/jobs/{id}/finish': {
    auth: 'agent',
    tenant: { req: (w, epoch) => ({ path: `/v1/agent/jobs/${w.jobA}/finish`, ...json({ epoch, reason: 'succeeded', exitCode: 0 }) }), expect: 404 },
  },
  'POST /v1/agent/jobs/{id}/logs': {
    auth: 'agent',
    tenant: { req: (w, epoch) => ({ path: `/v1/agent/jobs/${w.jobA}/logs`, ...json({ epoch, seq: 0, stream: 'stdout', at: new Date().toISOString(), lines: ['x'] }) }), expect: 404 },
  },
  'POST /v1/agent/jobs/{id}/progress': { auth: 'agent', tenant: { req: (w, epoch) => ({ path: `/v1/agent/jobs/${w.jobA}/progress`, ...json({ epoch, message: 'x' }) }), expect: 404 } },
  'GET /v1/agent/jobs/{id}/inputs/{digest}': { auth: 'agent', tenant: { req: (w, epoch) => ({ path: `/v1/agent/jobs/${w.jobA}/inputs/${w.blobA}?epoch=${epoch}` }), expect: 404 } },
  'POST /v1/agent/jobs/{id}/outputs': {
    auth: 'agent',
    tenant: { req: (w, epoch) => ({ path: `/v1/agent/jobs/${w.jobA}/outputs?epoch=${epoch}`, body: new Uint8Array(emptyTar), headers: { 'content-type': 'application/x-tar' } }), expect: 404 },
  },
  'POST /v1/agent/jobs/{id}/service-ready': { auth: 'agent', tenant: { req: (w, epoch) => ({ path: `/v1/agent/jobs/${w.jobA}/service-ready`, ...json({ epoch }) }), expect: 404 } },
  'POST /v1/agent/jobs/{id}/result': { auth: 'agent', tenant: { req: (w, epoch) => ({ path: `/v1/agent/jobs/${w.jobA}/result`, ...json({ epoch, result: { x: 1 } }) }), expect: 404 } },
};

/** The tar of one small file, as an agent packs /outputs. */
let emptyTar: Buffer;
async function smallTar(): Promise<Buffer> {
  const pack = tarStream.pack();
  pack.entry({ name: 'a.txt' }, 'a');
  pack.finalize();
  const parts: Buffer[] = [];
  for await (const c of pack) parts.push(Buffer.from(c as Uint8Array));
  return Buffer.concat(parts);
}

const methods = ['get', 'put', 'post', 'delete', 'patch'];
/** "METHOD /path" for a row's key: the route it tries. */
const routeOf = (key: string) => key.split(' (')[0]!;
/** A path that matches the route with made-up ids: what an auth probe needs (it is refused before any lookup). */
const anyPath = (route: string) =>
  route
    .split(' ')[1]!
    .replace('{id}', route.includes('/accounts/') ? 'acct_00000000000000000000aa' : route.includes('/keys/') ? 'key_00000000000000000000aa' : route.includes('/nodes/') ? 'node_00000000000000000000aa' : route.includes('/enrollment-tokens/') ? 'enr_00000000000000000000aa' : 'job_00000000000000000000aa')
    .replace('{tokenId}', 'stok_00000000000000000000aa')
    .replace('{digest}', `sha256:${'0'.repeat(64)}`);

describe.skipIf(dbSkipReason)('security matrix', () => {
  let h: Harness;
  let w: World;
  /** Keys of the tenant under attack: each scope alone, both, and a revoked one with both. */
  let keys: { client: string; provider: string; both: string; revoked: string; attacker: string };
  let attackerNode: TestNode;
  let retiredNode: TestNode;
  let documented: Set<string>;
  let served: Set<string>;
  /** Each documented operation's security requirement. */
  let security: Map<string, unknown>;

  beforeAll(async () => {
    emptyTar = await smallTar();
    h = await startHarness();
    const a = await h.newAccount('both');
    const b = await h.newAccount('both');
    const keyOf = async (scopes: string[]) => h.admin.post<{ id: string; key: string }>(`/v1/accounts/${a.accountId}/keys`, { scopes });
    const client = await keyOf(['client']);
    const provider = await keyOf(['provider']);
    const revoked = await keyOf(['client', 'provider']);
    await h.admin.delete(`/v1/keys/${revoked.id}`);
    keys = { client: client.key, provider: provider.key, both: a.key, revoked: revoked.key, attacker: b.key };

    const blob = Buffer.from('input of A');
    const up = await h.fetch('/v1/blobs', { method: 'POST', key: a.key, body: new Uint8Array(blob), headers: { 'content-type': 'application/octet-stream' } });
    expect(up.status).toBe(201);
    const blobA = `sha256:${createHash('sha256').update(blob).digest('hex')}`;
    const nodeA = await createTestNode(h, a.accountId);
    attackerNode = await createTestNode(h, b.accountId);
    retiredNode = await createTestNode(h, a.accountId);
    await h.coordinator.deps.database.db.update(nodes).set({ status: 'retired' }).where(eq(nodes.id, retiredNode.nodeId));
    const job = await a.api.post<Job>('/v1/jobs', jobSpec({ inputs: [{ digest: blobA, path: 'in.txt' }] }, { gpus: 1, gpu: { model: 'NoSuchGPU' } }));
    await leaseTo(h, job.id, nodeA.nodeId);
    const stored = await nodeA.fetch(`/v1/agent/jobs/${job.id}/outputs?epoch=1`, { method: 'POST', body: new Uint8Array(emptyTar), headers: { 'content-type': 'application/x-tar' } });
    expect(stored.status).toBe(201);
    const token = await a.api.post<{ id: string }>('/v1/enrollment-tokens', {});
    w = { h, accountA: a.accountId, jobA: job.id, nodeA, blobA, keyIdA: client.id, tokenIdA: token.id };

    const doc = await h.client().get<{ paths: Record<string, Record<string, { security?: unknown }>> }>('/openapi.json');
    documented = new Set(Object.entries(doc.paths).flatMap(([p, item]) => Object.keys(item).filter((m) => methods.includes(m)).map((m) => `${m.toUpperCase()} ${p}`)));
    security = new Map(Object.entries(doc.paths).flatMap(([p, item]) => Object.entries(item).map(([m, op]) => [`${m.toUpperCase()} ${p}`, op.security] as const)));
    served = new Set(
      createApp(h.coordinator.deps)
        .routes.filter((r) => r.method !== 'ALL' && !r.path.includes('*'))
        .map((r) => `${r.method} ${r.path.replace(/:([A-Za-z0-9_]+)(\{[^}]*\})?/g, '{$1}')}`),
    );
  });
  afterAll(async () => h?.close());

  const send = (method: string, req: Req, auth: string | null) =>
    h.fetch(req.path, { method, ...(req.body !== undefined ? { body: req.body } : {}), headers: { ...req.headers, ...(auth ? { authorization: auth } : {}) } });

  async function expectStatus(res: Response, status: number, what: string) {
    const text = await res.text();
    expect(res.status, `${what}: ${text.slice(0, 300)}`).toBe(status);
    if (status >= 400) {
      expect(res.headers.get('content-type'), what).toMatch(/^application\/problem\+json/);
      // A refusal of the thing, not of a path the route does not have.
      expect(JSON.parse(text).code, what).not.toBe('no_route');
    }
  }

  it('has a row for every route the app serves and every operation the OpenAPI document lists, and no other', () => {
    const rows = new Set(Object.keys(matrix).map(routeOf));
    const routes = new Set([...documented, ...served]);
    expect([...routes].filter((r) => !rows.has(r)).sort(), 'routes without rows').toEqual([]);
    expect([...rows].filter((r) => !routes.has(r)).sort(), 'rows without a route').toEqual([]);
  });

  it('documents each route with the credential the table says it takes', () => {
    const scheme = { key: [{ bearerAuth: [] }], agent: [{ agentToken: [] }], public: undefined, enrollment: undefined };
    const wrong = Object.entries(matrix)
      .filter(([key]) => documented.has(routeOf(key)))
      .filter(([key, row]) => JSON.stringify(security.get(routeOf(key))) !== JSON.stringify(scheme[row.auth]))
      .map(([key]) => `${key}: ${JSON.stringify(security.get(routeOf(key)))}`);
    expect(wrong).toEqual([]);
  });

  for (const [key, row] of Object.entries(matrix)) {
    const route = routeOf(key);
    const method = route.split(' ')[0]!;

    if (row.auth === 'public') {
      it(`${key}: public (${row.why})`, async () => {
        const res = await send(method, row.req?.(w) ?? { path: anyPath(route) }, null);
        expect(res.status, key).toBeLessThan(400);
        await res.body?.cancel();
      });
      continue;
    }

    if (row.auth === 'enrollment') {
      it(`${key}: 401 with an unknown enrollment token`, async () => {
        const { publicJwk } = await newAgentKey();
        const body = { token: `gnt_aaaaaaaaaaaa_${'b'.repeat(43)}`, publicKey: publicJwk, name: 'intruder', hardware: a5000Machine('matrix') };
        await expectStatus(await send(method, { path: anyPath(route), ...json(body) }, null), 401, `${key} with an unknown token`);
      });
      continue;
    }

    if (row.auth === 'key') {
      it(`${key}: 401 with no key, a wrong key and a revoked key`, async () => {
        const req = { path: anyPath(key.includes('follow=1') ? `${route}?follow=1` : route) };
        await expectStatus(await send(method, req, null), 401, `${key} with no key`);
        await expectStatus(await send(method, req, 'Bearer not-a-key'), 401, `${key} with a malformed key`);
        await expectStatus(await send(method, req, `Bearer gk_aaaaaaaaaaaa_${'b'.repeat(43)}`), 401, `${key} with an unknown key`);
        await expectStatus(await send(method, req, `Bearer ${keys.revoked}`), 401, `${key} with a revoked key`);
      });
      // A key of the same tenant with every scope but the one the route takes (none for a route any key may call).
      const wrongScope = ({ client: 'provider', provider: 'client', admin: 'both', 'client or provider': null, any: null } as const)[row.scope];
      if (wrongScope) {
        it(`${key}: 403 for a key without the ${row.scope} scope`, async () => {
          await expectStatus(await send(method, { path: anyPath(route) }, `Bearer ${keys[wrongScope]}`), 403, `${key} with the wrong scope`);
        });
      }
      const tenant = row.tenant;
      if ('req' in tenant) {
        it(`${key}: another tenant's object is not found`, async () => {
          const res = await send(method, tenant.req(w, 1), `Bearer ${keys.attacker}`);
          if (tenant.expect === 404) await expectStatus(res, 404, `${key} from another tenant`);
          else await tenant.expect(res, w);
        });
      }
      continue;
    }

    it(`${key}: 401 with no agent token, a forged one and a retired node's`, async () => {
      const req = { path: anyPath(route) };
      await expectStatus(await send(method, req, null), 401, `${key} with no token`);
      await expectStatus(await send(method, req, 'Bearer not-a-jwt'), 401, `${key} with a malformed token`);
      // Signed by a key that is not the node's.
      const forger = await newAgentKey();
      const forged = await signAgentToken(forger.privateKey, { sub: w.nodeA.nodeId, aud: h.coordinator.deps.config.name });
      await expectStatus(await send(method, req, `Bearer ${forged}`), 401, `${key} with a forged token`);
      await expectStatus(await send(method, req, `Bearer ${await retiredNode.token()}`), 401, `${key} from a retired node`);
    });
    const tenant = row.tenant;
    if ('req' in tenant) {
      it(`${key}: another node's job is not found, at its epoch or any other`, async () => {
        for (const epoch of [1, 7]) {
          const res = await send(method, tenant.req(w, epoch), `Bearer ${await attackerNode.token()}`);
          if (tenant.expect === 404) await expectStatus(res, 404, `${key} from another node at epoch ${epoch}`);
          else await tenant.expect(res, w);
        }
      });
    }
  }
});
