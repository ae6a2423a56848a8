// Service jobs through the coordinator's front door, with the agent's real tunnel (ws + HTTP/2)
// run in-process against a small Node upstream: auth, what is stripped either way, streaming,
// limits, cancellation, revocation and upgrades. The same with a real agent and Docker is in
// test/e2e/services.test.ts.
import { createServer, type IncomingMessage, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { WebSocket, WebSocketServer } from 'ws';
import { eq } from 'drizzle-orm';
import { nodes } from '../../coordinator/db/schema/index.ts';
import type { Job } from '../../shared/jobs.ts';
import type { CreatedServiceToken, ServiceTokenInfo } from '../../shared/services.ts';
import { ServiceTunnel } from '../../provider-agent/tunnel/tunnel.ts';
import { createTestNode, leaseTo, setStatus, type TestNode } from '../support/agent-fixture.ts';
import { jobSpec } from '../support/factories.ts';
import { dbSkipReason, itOn, startHarness, type Harness } from '../support/harness.ts';
import { loadConfig } from '../../coordinator/config.ts';
import { silentLogger } from '../../coordinator/log.ts';
import { startCoordinator } from '../../coordinator/server.ts';
import { createServer as createNetServer } from 'node:net';
import { expectProblem } from '../support/problem.ts';
import { loopback, serviceFetch, serviceRequest } from '../support/service-client.ts';
import { until } from '../support/until.ts';

/** The job's side: what it saw of each request, and endpoints for each behaviour under test. */
class Upstream {
  server!: Server;
  wss = new WebSocketServer({ noServer: true });
  seen: IncomingMessage['headers'][] = [];
  /** Requests to /hang whose client side closed (the cancel reached the job). */
  hangClosed = 0;
  release: (() => void) | null = null;

  async start(): Promise<number> {
    this.server = createServer((req, res) => {
      this.seen.push(req.headers);
      const path = (req.url ?? '').split('?')[0];
      if (path === '/headers') return res.end(JSON.stringify({ url: req.url, headers: req.headers }));
      if (path === '/cookies') {
        res.setHeader('service-worker-allowed', '/');
        res.setHeader('set-cookie', ['wide=1; Domain=localhost; Path=/', 'own=2; Path=/; HttpOnly', 'gantry_service_token=forged; Path=/']);
        return res.end('ok');
      }
      if (path === '/events') {
        res.writeHead(200, { 'content-type': 'text/event-stream' });
        res.write('data: first\n\n');
        this.release = () => res.end('data: last\n\n');
        return;
      }
      if (path === '/hang') {
        res.writeHead(200, { 'content-type': 'text/plain' });
        res.write('begun\n');
        res.on('close', () => this.hangClosed++);
        return;
      }
      if (path === '/big') {
        // 8 MiB, far past the tunnel's windows: a reader that stops holds the job, not the coordinator's memory.
        const chunk = Buffer.alloc(64 * 1024, 'x');
        let left = 128;
        const pump = () => {
          while (left > 0) {
            left--;
            if (!res.write(chunk)) return void res.once('drain', pump);
          }
          res.end();
        };
        return pump();
      }
      if (path === '/upload') {
        let n = 0;
        req.on('data', (c: Buffer) => (n += c.length));
        req.on('end', () => res.end(String(n)));
        return;
      }
      if (path === '/health') return res.end('ok');
      res.statusCode = 404;
      res.end('no');
    });
    this.server.on('upgrade', (req, socket, head) => {
      this.seen.push(req.headers);
      this.wss.handleUpgrade(req, socket, head, (ws) => ws.on('message', (m) => ws.send(`echo:${m.toString()}`)));
    });
    await new Promise<void>((r) => this.server.listen(0, '127.0.0.1', r));
    return (this.server.address() as AddressInfo).port;
  }

  close() {
    this.server.closeAllConnections();
    this.server.close();
    this.wss.close();
  }
}

describe.skipIf(dbSkipReason)('service jobs through the coordinator', () => {
  let h: Harness;
  let owner: { accountId: string; key: string; api: Harness['admin'] };
  let stranger: { key: string };
  let node: TestNode;
  let tunnel: ServiceTunnel;
  const upstream = new Upstream();
  let port: number;

  /** A service job of the owner's, running on the node at epoch 1 and reachable through the tunnel. */
  async function runningService(service: Record<string, unknown> = { port: 1 }, ready = true): Promise<Job> {
    const job = await owner.api.post<Job>('/v1/jobs', jobSpec({ service }, { gpus: 1, gpu: { model: 'NoSuchGPU' } }));
    await leaseTo(h, job.id, node.nodeId, 'running', 1);
    tunnel.add(job.id, { host: '127.0.0.1', port });
    if (ready) {
      const res = await node.fetch(`/v1/agent/jobs/${job.id}/service-ready`, { method: 'POST', body: JSON.stringify({ epoch: 1 }), headers: { 'content-type': 'application/json' } });
      expect(res.status).toBe(204);
    }
    return job;
  }
  const auth = (key: string) => ({ authorization: `Bearer ${key}` });

  beforeAll(async () => {
    h = await startHarness({ GANTRY_SERVICE_BODY_LIMIT_BYTES: String(1024 * 1024), GANTRY_SERVICE_IDLE_TIMEOUT_SECONDS: '30' });
    owner = await h.newAccount('client');
    stranger = await h.newAccount('client');
    const provider = await h.newAccount('provider');
    node = await createTestNode(h, provider.accountId);
    port = await upstream.start();
    tunnel = new ServiceTunnel({ coordinatorUrl: h.url, token: () => node.token(), log: () => {}, backoff: { initialMs: 50, maxMs: 500 } });
    tunnel.start();
    await until('the tunnel is open', () => h.coordinator.deps.services.tunnels.session(node.nodeId), 10_000);
  });
  afterAll(async () => {
    await tunnel?.stop();
    upstream.close();
    await h?.close();
  });

  it('refuses a service without a network, and shows a service job its URL and state', async () => {
    const refused = await h.fetch('/v1/jobs', { method: 'POST', key: owner.key, body: JSON.stringify(jobSpec({ service: { port: 80 }, network: 'none' })), headers: { 'content-type': 'application/json' } });
    await expectProblem(refused, { status: 400, code: 'validation', title: 'Invalid request', errors: [{ path: 'network', message: 'network' }] });

    const job = await runningService({ port: 80, readinessPath: '/health' }, false);
    const before = await owner.api.get<Job>(`/v1/jobs/${job.id}`);
    expect(before.serviceUrl).toBe(h.coordinator.deps.services.urls.urlOf(job.id));
    expect(before.serviceUrl).toMatch(new RegExp(`^http://${job.id}\\.localhost:\\d+$`));
    expect(before.service).toEqual({ state: 'starting', readyAt: null, requests: 0 });
    // Not ready: 503 with Retry-After.
    const starting = await serviceFetch(before.serviceUrl!, { headers: auth(owner.key) });
    expect(starting.status).toBe(503);
    expect(starting.headers['retry-after']).toBe('5');
    expect(starting.headers['content-type']).toMatch(/^application\/problem\+json/);

    await node.fetch(`/v1/agent/jobs/${job.id}/service-ready`, { method: 'POST', body: JSON.stringify({ epoch: 1 }), headers: { 'content-type': 'application/json' } });
    const after = await owner.api.get<Job>(`/v1/jobs/${job.id}`);
    expect(after.service?.state).toBe('ready');
    expect(after.service?.readyAt).toEqual(expect.any(String));
    expect((await serviceFetch(after.serviceUrl!, { headers: auth(owner.key) })).status).toBe(404); // the job's own 404 for /

    // A stale epoch's readiness is refused; once the job ends the service is gone (410) and stopped.
    const stale = await node.fetch(`/v1/agent/jobs/${job.id}/service-ready`, { method: 'POST', body: JSON.stringify({ epoch: 7 }), headers: { 'content-type': 'application/json' } });
    expect(stale.status).toBe(409);
    await setStatus(h, job.id, 'succeeded');
    h.coordinator.deps.services.directory.invalidate(job.id);
    const ended = await serviceFetch(`${after.serviceUrl}/headers`, { headers: auth(owner.key) });
    expect(ended.status).toBe(410);
    expect((await owner.api.get<Job>(`/v1/jobs/${job.id}`)).service?.state).toBe('stopped');
  });

  it('lets the owner and token holders in, 401 without, 404 for another tenant, and strips the credential', async () => {
    const job = await runningService();
    const url = `${job.serviceUrl}/headers?q=1`;
    expect((await serviceFetch(url)).status).toBe(401);
    expect((await serviceFetch(url, { headers: auth('gk_aaaaaaaaaaaa_' + 'b'.repeat(43)) })).status).toBe(401);
    const other = await serviceFetch(url, { headers: auth(stranger.key) });
    expect(other.status).toBe(404);
    expect(JSON.parse(other.body).code).toBe('not_found');

    const seenAsOwner = JSON.parse((await serviceFetch(url, { headers: { ...auth(owner.key), cookie: 'app=1; gantry_service_token=x' } })).body);
    expect(seenAsOwner.url).toBe('/headers?q=1');
    expect(seenAsOwner.headers.authorization).toBeUndefined();
    expect(seenAsOwner.headers.cookie).toBe('app=1');
    expect(seenAsOwner.headers['x-gantry-job']).toBeUndefined();
    expect(JSON.stringify(seenAsOwner)).not.toContain(owner.key);

    const made = await owner.api.post<CreatedServiceToken>(`/v1/jobs/${job.id}/service-tokens`, { name: 'app users' });
    expect(made.token).toMatch(/^gst_/);
    const seenAsHolder = JSON.parse((await serviceFetch(url, { headers: auth(made.token) })).body);
    expect(JSON.stringify(seenAsHolder)).not.toContain(made.token);
    expect(seenAsHolder.headers.authorization).toBeUndefined();
    // A token opens only its own job's service.
    const job2 = await runningService();
    expect((await serviceFetch(`${job2.serviceUrl}/headers`, { headers: auth(made.token) })).status).toBe(401);
    // Listing never shows the token again; the stranger cannot list or revoke it.
    const list = await owner.api.get<{ items: ServiceTokenInfo[] }>(`/v1/jobs/${job.id}/service-tokens`);
    expect(list.items.map((t) => t.id)).toEqual([made.id]);
    expect(JSON.stringify(list)).not.toContain(made.token);
    expect((await h.fetch(`/v1/jobs/${job.id}/service-tokens/${made.id}`, { method: 'DELETE', key: stranger.key })).status).toBe(404);

    await owner.api.delete(`/v1/jobs/${job.id}/service-tokens/${made.id}`);
    expect((await serviceFetch(url, { headers: auth(made.token) })).status).toBe(401);
  });

  it('trades ?gantry_token= for an HttpOnly cookie on the service host and a redirect without it', async () => {
    const job = await runningService();
    const { token } = await owner.api.post<CreatedServiceToken>(`/v1/jobs/${job.id}/service-tokens`, { name: 'browser', expiresInSeconds: 3600 });
    const first = await serviceFetch(`${job.serviceUrl}/headers?a=1&gantry_token=${token}`);
    expect(first.status).toBe(303);
    expect(first.headers.location).toBe('/headers?a=1');
    const cookie = first.headers['set-cookie']![0]!;
    expect(cookie).toMatch(/^gantry_service_token=gst_[^;]+; Path=\/; HttpOnly; SameSite=Lax$/);
    const seen = JSON.parse((await serviceFetch(`${job.serviceUrl}/headers?a=1`, { headers: { cookie: cookie.split(';')[0]! } })).body);
    expect(seen.headers.cookie).toBeUndefined();
    expect((await serviceFetch(`${job.serviceUrl}/headers?gantry_token=gst_aaaaaaaaaaaa_${'b'.repeat(43)}`)).status).toBe(401);
    // Another site's page (a sibling service host is the same site) cannot post with the cookie; the service's own page can.
    const jar = { cookie: cookie.split(';')[0]!, 'content-type': 'text/plain' };
    const other = `http://job_00000000000000000000aa.localhost:${new URL(job.serviceUrl!).port}`;
    const forged = await serviceFetch(`${job.serviceUrl}/upload`, { method: 'POST', headers: { ...jar, origin: other }, body: 'x' });
    expect(forged.status).toBe(403);
    expect(JSON.parse(forged.body).code).toBe('forbidden');
    expect((await serviceFetch(`${job.serviceUrl}/upload`, { method: 'POST', headers: { ...jar, 'sec-fetch-site': 'same-site' }, body: 'x' })).status).toBe(403);
    const own = await serviceFetch(`${job.serviceUrl}/upload`, { method: 'POST', headers: { ...jar, origin: job.serviceUrl!, 'sec-fetch-site': 'same-origin' }, body: 'x' });
    expect(own.body).toBe('1');
  });

  it("strips Service-Worker-Allowed and cookies scoped past the service's host from its answers", async () => {
    const job = await runningService();
    const res = await serviceFetch(`${job.serviceUrl}/cookies`, { headers: auth(owner.key) });
    expect(res.status).toBe(200);
    expect(res.headers['service-worker-allowed']).toBeUndefined();
    expect(res.headers['set-cookie']).toEqual(['own=2; Path=/; HttpOnly']);
  });

  it('serves a public service to anyone, still without forwarding a Gantry credential', async () => {
    const job = await runningService({ port: 1, public: true });
    expect((await serviceFetch(`${job.serviceUrl}/headers`)).status).toBe(200);
    const seen = JSON.parse((await serviceFetch(`${job.serviceUrl}/headers`, { headers: auth(stranger.key) })).body);
    expect(seen.headers.authorization).toBeUndefined();
  });

  it('streams an answer as the job writes it, and ends a stream at once when its key is revoked', async () => {
    const job = await runningService();
    const made = await h.admin.post<{ id: string; key: string }>(`/v1/accounts/${owner.accountId}/keys`, { scopes: ['client'] });
    const chunks: string[] = [];
    const closed = new Promise<void>((resolve) => {
      const req = serviceRequest(`${job.serviceUrl}/events`, { headers: auth(made.key) });
      req.on('response', (res) => {
        res.on('data', (c: Buffer) => chunks.push(c.toString()));
        res.on('close', () => resolve());
        res.on('error', () => resolve());
      });
      req.end();
    });
    // The first event arrives while the job has not written its last.
    await until('the first event', () => chunks.join('').includes('data: first'), 10_000);
    expect(chunks.join('')).not.toContain('last');
    await h.admin.delete(`/v1/keys/${made.id}`);
    await closed;
    expect(chunks.join('')).not.toContain('last');
    upstream.release?.();
  });

  it('cancels the request at the job when the client goes away', async () => {
    const job = await runningService();
    const before = upstream.hangClosed;
    await new Promise<void>((resolve) => {
      const req = serviceRequest(`${job.serviceUrl}/hang`, { headers: auth(owner.key) });
      req.on('response', (res) => res.once('data', () => (req.destroy(), resolve())));
      req.on('error', () => {});
      req.end();
    });
    await until('the job saw the cancel', () => upstream.hangClosed > before, 10_000);
  });

  it('refuses a body over the limit with 413, and streams one under it', async () => {
    const job = await runningService();
    const under = await serviceFetch(`${job.serviceUrl}/upload`, { method: 'POST', headers: auth(owner.key), body: Buffer.alloc(512 * 1024) });
    expect(under.body).toBe(String(512 * 1024));
    const declared = await serviceFetch(`${job.serviceUrl}/upload`, { method: 'POST', headers: auth(owner.key), body: Buffer.alloc(2 * 1024 * 1024) });
    expect(declared.status).toBe(413);
    // Chunked, without a length: cut as it streams past the limit.
    const streamed = await new Promise<number>((resolve, reject) => {
      const req = serviceRequest(`${job.serviceUrl}/upload`, { method: 'POST', headers: { ...auth(owner.key), 'transfer-encoding': 'chunked' } });
      req.on('response', (res) => (res.resume(), resolve(res.statusCode!)));
      req.on('error', reject);
      let sent = 0;
      const pump = () => {
        while (sent < 4 * 1024 * 1024) {
          sent += 64 * 1024;
          if (!req.write(Buffer.alloc(64 * 1024))) return void req.once('drain', pump);
        }
        req.end();
      };
      pump();
    });
    expect(streamed).toBe(413);
  });

  it('serves 200 concurrent requests while one reader is stalled', async () => {
    const job = await runningService();
    // The stalled reader: asks for 8 MiB and reads none of it.
    const stalled = serviceRequest(`${job.serviceUrl}/big`, { headers: auth(owner.key) });
    const gotHeaders = new Promise<void>((r) => stalled.on('response', (res) => (res.pause(), r())));
    stalled.on('error', () => {});
    stalled.end();
    await gotHeaders;
    const answers = await Promise.all(Array.from({ length: 200 }, (_, i) => serviceFetch(`${job.serviceUrl}/headers?i=${i}`, { headers: auth(owner.key) })));
    expect(answers.filter((a) => a.status === 200)).toHaveLength(200);
    expect(answers.map((a) => JSON.parse(a.body).url)).toContain('/headers?i=199');
    stalled.destroy();
  });

  it('passes a WebSocket upgrade through to the job', async () => {
    const job = await runningService();
    const url = job.serviceUrl!.replace('http://', 'ws://');
    const ws = new WebSocket(`${url}/socket`, { headers: auth(owner.key), lookup: loopback });
    const reply = await new Promise<string>((resolve, reject) => {
      ws.on('open', () => ws.send('hi'));
      ws.on('message', (m) => resolve(m.toString()));
      ws.on('error', reject);
    });
    expect(reply).toBe('echo:hi');
    ws.close();
    expect(JSON.stringify(upstream.seen.at(-1))).not.toContain(owner.key);
    const refused = new WebSocket(`${url}/socket`, { lookup: loopback });
    const status = await new Promise<number>((resolve) => refused.on('unexpected-response', (_q, res) => resolve(res.statusCode!)));
    expect(status).toBe(401);
  });

  it("refuses a tunnel with a forged or retired node's token, and ends a retired node's open tunnel", async () => {
    const forged = new WebSocket(`${h.url.replace('http', 'ws')}/v1/agent/tunnel`, { headers: { authorization: 'Bearer not-a-jwt' } });
    expect(await new Promise<number>((r) => forged.on('unexpected-response', (_q, res) => r(res.statusCode!)))).toBe(401);
    const provider = await h.newAccount('provider');
    const doomed = await createTestNode(h, provider.accountId);
    const t = new ServiceTunnel({ coordinatorUrl: h.url, token: () => doomed.token(), log: () => {}, backoff: { initialMs: 50, maxMs: 200 } });
    t.start();
    await until('the tunnel is open', () => h.coordinator.deps.services.tunnels.session(doomed.nodeId), 10_000);
    await h.coordinator.deps.database.db.update(nodes).set({ status: 'retired' }).where(eq(nodes.id, doomed.nodeId));
    await h.coordinator.deps.database.notify('gantry_node_retired', doomed.nodeId);
    await until('the tunnel is closed', () => !h.coordinator.deps.services.tunnels.session(doomed.nodeId), 10_000);
    await t.stop();
  });

  it('counts service requests and bytes in /metrics', async () => {
    const job = await runningService();
    await serviceFetch(`${job.serviceUrl}/headers`, { headers: auth(owner.key) });
    const text = await (await h.fetch('/metrics')).text();
    expect(text).toContain(`gantry_service_requests_total{job="${job.id}",status="2xx"} 1`);
    expect(text).toMatch(new RegExp(`gantry_service_bytes_total\\{job="${job.id}",direction="out"\\} \\d+`));
    expect(text).toContain(`gantry_service_response_seconds_count{job="${job.id}"} 1`);
    // The job's own count (all replicas together), stored every few seconds: what the dashboard's rate reads.
    await serviceFetch(`${job.serviceUrl}/headers`, { headers: auth(owner.key) });
    await until('the count is stored', async () => (await owner.api.get<Job>(`/v1/jobs/${job.id}`)).service?.requests === 2, 15_000);
  });

  itOn('postgres')("serves a request that reaches the replica without the node's tunnel, through the one that holds it", async () => {
    const [portA, portB] = [await freePort(), await freePort()];
    const shared = { GANTRY_NAME: 'gantry-replicas-test', GANTRY_SERVICES_URL: 'http://{job}.localhost' };
    const a = await startHarness({ ...shared, PORT: String(portA), GANTRY_INTERNAL_URL: `http://127.0.0.1:${portA}` });
    const b = await startCoordinator({
      config: loadConfig({ ...shared, PORT: String(portB), HOST: '127.0.0.1', GANTRY_LOG_REQUESTS: 'false', GANTRY_INTERNAL_URL: `http://127.0.0.1:${portB}` }),
      log: silentLogger,
      database: a.testDb.database,
    });
    const upstream = new Upstream();
    const port = await upstream.start();
    let tunnel: ServiceTunnel | null = null;
    try {
      const owner = await a.newAccount('client');
      const provider = await a.newAccount('provider');
      const node = await createTestNode(a, provider.accountId);
      // The agent's tunnel ends at B.
      tunnel = new ServiceTunnel({ coordinatorUrl: b.url, token: () => node.token(), log: () => {} });
      tunnel.start();
      await until('the tunnel is open at B', () => b.deps.services.tunnels.session(node.nodeId), 10_000);
      const job = await owner.api.post<Job>('/v1/jobs', jobSpec({ service: { port: 1 } }, { gpus: 1, gpu: { model: 'NoSuchGPU' } }));
      await leaseTo(a, job.id, node.nodeId, 'running', 1);
      tunnel.add(job.id, { host: '127.0.0.1', port });
      expect((await node.fetch(`/v1/agent/jobs/${job.id}/service-ready`, { method: 'POST', body: JSON.stringify({ epoch: 1 }), headers: { 'content-type': 'application/json' } })).status).toBe(204);

      const viaA = `http://${job.id}.localhost:${portA}/headers`;
      const answer = await until('A forwards to B', async () => {
        const r = await serviceFetch(viaA, { headers: { authorization: `Bearer ${owner.key}` } });
        return r.status === 200 ? r : null;
      }, 10_000);
      const seen = JSON.parse(answer.body);
      expect(seen.headers.authorization).toBeUndefined();
      expect(seen.headers['x-gantry-replica-token']).toBeUndefined();
      expect(JSON.stringify(seen)).not.toContain(owner.key);
      // A still checks the caller; B takes only a token A made for it.
      expect((await serviceFetch(viaA)).status).toBe(401);
      const forged = await serviceFetch(`http://${job.id}.localhost:${portB}/headers`, { headers: { 'x-gantry-replica-token': 'e30.e30.AAAA' } });
      expect(forged.status).toBe(401);
      const made = a.coordinator.deps.services.replicas.tokenFor(`http://127.0.0.1:${portA}`, job.id);
      expect((await serviceFetch(`http://${job.id}.localhost:${portB}/headers`, { headers: { 'x-gantry-replica-token': made } })).status).toBe(401);

      // A WebSocket through A too: upgraded at B, bytes both ways through A, no credential past A.
      const ws = new WebSocket(`ws://${job.id}.localhost:${portA}/socket`, { headers: { authorization: `Bearer ${owner.key}` }, lookup: loopback });
      const reply = await new Promise<string>((resolve, reject) => {
        ws.on('open', () => ws.send('hi'));
        ws.on('message', (m) => resolve(m.toString()));
        ws.on('error', reject);
      });
      expect(reply).toBe('echo:hi');
      ws.close();
      expect(JSON.stringify(upstream.seen.at(-1))).not.toContain(owner.key);
      const refused = new WebSocket(`ws://${job.id}.localhost:${portA}/socket`, { lookup: loopback });
      expect(await new Promise<number>((r) => refused.on('unexpected-response', (_q, res) => r(res.statusCode!)))).toBe(401);

      // The tunnel moves to A: A serves it itself.
      await tunnel.stop();
      tunnel = new ServiceTunnel({ coordinatorUrl: a.url, token: () => node.token(), log: () => {} });
      tunnel.add(job.id, { host: '127.0.0.1', port });
      tunnel.start();
      await until('the tunnel is open at A', () => a.coordinator.deps.services.tunnels.session(node.nodeId), 10_000);
      expect((await serviceFetch(viaA, { headers: { authorization: `Bearer ${owner.key}` } })).status).toBe(200);
    } finally {
      await tunnel?.stop();
      upstream.close();
      await b.close();
      await a.close();
    }
  });
});

const freePort = () =>
  new Promise<number>((resolve) => {
    const s = createNetServer().listen(0, '127.0.0.1', () => {
      const { port } = s.address() as AddressInfo;
      s.close(() => resolve(port));
    });
  });
