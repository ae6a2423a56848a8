// The coordinator as a user runs it: `npm start` (node --import tsx coordinator/main.ts) as its
// own process, read through its stdout and stderr.
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { request as httpRequest } from 'node:http';
import { Agent as HttpsAgent, request as httpsRequest } from 'node:https';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import postgres from 'postgres';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { migrationsFolder } from '../../coordinator/db/migrate.ts';
import { ApiClient } from '../../shared/client.ts';
import { cleanEnv, dataDirLockHeld, repoRoot, spawnCoordinator, type CoordinatorProcess } from '../support/coordinator-process.ts';
import { postgresAdminUrl, postgresSkipReason } from '../support/database.ts';
import { until } from '../support/until.ts';

const hello = { name: 'hello', image: 'busybox:latest', command: ['echo', 'hi'], resources: { cpu: 1, memoryMb: 128, gpus: 0 } };
const stackTrace = /^\s+at .+:\d+:\d+\)?$/m;
const base = { PORT: '0', HOST: '127.0.0.1', GANTRY_SHUTDOWN_GRACE_MS: '5000' };

const tmpRoot = mkdtempSync(join(tmpdir(), 'gantry-e2e-coordinator-'));
afterAll(() => rmSync(tmpRoot, { recursive: true, force: true }));
const newDir = (name: string) => join(tmpRoot, `${name}-${randomBytes(3).toString('hex')}`);

const running: CoordinatorProcess[] = [];
function start(env: Record<string, string>, args: string[] = []): CoordinatorProcess {
  const p = spawnCoordinator({ ...base, ...env }, args);
  running.push(p);
  return p;
}
afterEach(async () => {
  await Promise.all(running.splice(0).map((p) => p.stop(3000)));
});

/** A client account and its key, made with the admin key. */
async function clientAccount(url: string, adminKey: string) {
  const admin = new ApiClient({ baseUrl: url, token: adminKey });
  const account = await admin.post<{ id: string }>('/v1/accounts', { name: 'e2e', kind: 'client' });
  const { key } = await admin.post<{ key: string }>(`/v1/accounts/${account.id}/keys`, { scopes: ['client'] });
  return { accountId: account.id, key, api: new ApiClient({ baseUrl: url, token: key }) };
}

/** Polls until probe() holds or the deadline passes. */

const nonEmpty = (lines: string[]) => lines.filter((l) => l.trim() !== '');

describe('configuration', () => {
  it.each([
    [{ PORT: 'abc' }, /^gantry-coordinator: invalid setting PORT="abc": must be a number$/],
    [{ DATABASE_URL: 'mysql://root:pw@db/x' }, /^gantry-coordinator: invalid setting DATABASE_URL: must start with postgres:\/\/$/],
    [{ GANTRY_LEASE_TTL_SECONDS: '10' }, /^gantry-coordinator: invalid setting GANTRY_LEASE_TTL_SECONDS="10": must be 15 or more \(seconds\)$/],
  ])('a bad value stops the start with one line naming the setting: %j', async (env, line) => {
    const p = start(env);
    const { code } = await p.exited;
    expect(code).not.toBe(0);
    expect(nonEmpty(p.stderr)).toHaveLength(1);
    expect(p.stderr[0]).toMatch(line);
    expect(nonEmpty(p.stdout)).toEqual([]);
  });

  it('an unknown command prints the usage and exits non-zero', async () => {
    const p = start({}, ['frobnicate']);
    expect((await p.exited).code).not.toBe(0);
    expect(p.stderr.join('\n')).toContain('unknown command "frobnicate"');
    expect(p.stderr.join('\n')).toContain('admin-key');
  });
});

describe('PGlite data dir: first start, restart, a second coordinator, a lost admin key', () => {
  const dataDir = newDir('pglite');
  let adminKey = '';
  let clientKey = '';
  let jobId = '';

  it('first start: migrates, prints the admin key once on a line of its own, and serves', async () => {
    const p = start({ GANTRY_DATA_DIR: dataDir });
    const ready = await p.ready;
    expect(ready.url).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
    expect(p.stdout.find((l) => l.startsWith('Gantry coordinator'))).toContain(`PGlite in ${dataDir}`);
    const keyLines = p.stdout.filter((l) => l.startsWith('Admin API key: '));
    expect(keyLines).toHaveLength(1);
    expect(keyLines[0]).toMatch(/^Admin API key: gk_[0-9a-z]{12}_[A-Za-z0-9_-]{43}$/);
    expect(p.stdout.some((l) => l.includes('Authorization: Bearer'))).toBe(true);
    adminKey = ready.adminKey!;
    const { key, api } = await clientAccount(ready.url, adminKey);
    clientKey = key;
    jobId = (await api.post<{ id: string }>('/v1/jobs', hello)).id;
    expect(dataDirLockHeld(dataDir)).toBe(true);
    await p.stop();
    expect(await p.exited).toEqual({ code: 0, signal: null });
    expect(dataDirLockHeld(dataDir)).toBe(false);
  });

  it('restart on the same data dir: the job is there, and no new admin key is printed', async () => {
    const p = start({ GANTRY_DATA_DIR: dataDir });
    const ready = await p.ready;
    expect(ready.adminKey).toBeNull();
    expect(p.stdout.some((l) => l.includes('Admin API key'))).toBe(false);
    const job = await new ApiClient({ baseUrl: ready.url, token: clientKey }).get<{ id: string; status: string }>(`/v1/jobs/${jobId}`);
    expect(job).toMatchObject({ id: jobId, status: 'queued' });
    expect((await new ApiClient({ baseUrl: ready.url, token: adminKey }).raw('GET', '/v1/jobs')).status).toBe(200);

    // A second coordinator on the same data dir refuses, and the first carries on.
    const second = start({ GANTRY_DATA_DIR: dataDir });
    const { code } = await second.exited;
    expect(code).not.toBe(0);
    expect(nonEmpty(second.stderr)).toHaveLength(1);
    expect(second.stderr[0]).toMatch(/^gantry-coordinator: the data dir .* is in use by another coordinator \(pid \d+\)/);
    expect(second.stderr[0]).toContain(`pid ${p.child.pid}`);
    expect(second.stderr.join('\n')).not.toMatch(stackTrace);
    expect((await fetch(`${ready.url}/healthz`)).status).toBe(200);

    // So does the admin-key recovery while the coordinator holds the data dir.
    const recovery = start({ GANTRY_DATA_DIR: dataDir }, ['admin-key']);
    expect((await recovery.exited).code).not.toBe(0);
    expect(recovery.stderr[0]).toContain('in use by another coordinator');
    expect((await new ApiClient({ baseUrl: ready.url, token: clientKey }).raw('GET', `/v1/jobs/${jobId}`)).status).toBe(200);
    await p.stop();
    expect((await p.exited).code).toBe(0);
  });

  it('a lost admin key: `npm run admin-key` prints a new one that works; --revoke-old revokes the rest', async () => {
    const adminKeyRun = (...args: string[]) => {
      const out = execFileSync('npm', ['run', '--silent', 'admin-key', ...(args.length ? ['--', ...args] : [])], {
        cwd: repoRoot,
        env: { ...cleanEnv(), GANTRY_DATA_DIR: dataDir },
        encoding: 'utf8',
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      const lines = nonEmpty(out.split('\n'));
      expect(lines).toHaveLength(1);
      return lines[0]!.match(/^Admin API key: (gk_[0-9a-z]{12}_[A-Za-z0-9_-]{43})$/)![1]!;
    };
    const recovered = adminKeyRun();
    expect(recovered).not.toBe(adminKey);
    const replacing = adminKeyRun('--revoke-old');

    const p = start({ GANTRY_DATA_DIR: dataDir });
    const ready = await p.ready;
    expect(ready.adminKey).toBeNull();
    const admin = new ApiClient({ baseUrl: ready.url, token: replacing });
    const account = await admin.post<{ id: string; kind: string }>('/v1/accounts', { name: 'after-recovery', kind: 'provider' });
    expect(account.kind).toBe('provider');
    for (const old of [adminKey, recovered]) {
      expect((await new ApiClient({ baseUrl: ready.url, token: old }).raw('GET', '/v1/jobs')).status).toBe(401);
    }
    // Tenants' keys are not touched.
    expect((await new ApiClient({ baseUrl: ready.url, token: clientKey }).raw('GET', `/v1/jobs/${jobId}`)).status).toBe(200);
  });
});

describe('a killed coordinator', () => {
  it('leaves a stale lock that the next start takes over, with the data intact', async () => {
    const dataDir = newDir('killed');
    const a = start({ GANTRY_DATA_DIR: dataDir });
    const ra = await a.ready;
    const { key, api } = await clientAccount(ra.url, ra.adminKey!);
    const job = await api.post<{ id: string }>('/v1/jobs', hello);
    a.child.kill('SIGKILL');
    expect((await a.exited).signal).toBe('SIGKILL');
    expect(readFileSync(join(dataDir, 'gantry.lock'), 'utf8')).toContain(String(a.child.pid));

    const b = start({ GANTRY_DATA_DIR: dataDir });
    const rb = await b.ready;
    expect(rb.adminKey).toBeNull();
    expect(readFileSync(join(dataDir, 'gantry.lock'), 'utf8')).toContain(String(b.child.pid));
    const read = await new ApiClient({ baseUrl: rb.url, token: key }).get<{ id: string; status: string }>(`/v1/jobs/${job.id}`);
    expect(read).toMatchObject({ id: job.id, status: 'queued' });
  });
});

describe('SIGTERM', () => {
  it('drains an in-flight request, closes the database cleanly and exits 0', async () => {
    const dataDir = newDir('drain');
    // A grace far past the test's timeout: the exit must come from the drain, not from the timer.
    const p = start({ GANTRY_DATA_DIR: dataDir, GANTRY_SHUTDOWN_GRACE_MS: '600000' });
    const ready = await p.ready;
    const { key } = await clientAccount(ready.url, ready.adminKey!);
    const url = new URL(ready.url);
    const body = Buffer.from(JSON.stringify({ ...hello, name: 'in-flight' }));

    // A submit whose body is only half sent when the signal comes.
    let inFlight: ReturnType<typeof httpRequest> | null = null;
    const response = new Promise<{ status: number; text: string }>((resolve, reject) => {
      const req = httpRequest(
        {
          host: url.hostname,
          port: url.port,
          path: '/v1/jobs',
          method: 'POST',
          headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json', 'content-length': body.length },
        },
        (res) => {
          let text = '';
          res.on('data', (d) => (text += d));
          res.on('end', () => resolve({ status: res.statusCode!, text }));
        },
      );
      req.on('error', reject);
      req.write(body.subarray(0, 10));
      inFlight = req;
    });
    // The server has taken our request in once it answers one sent after it.
    expect((await fetch(`${ready.url}/healthz`)).status).toBe(200);

    p.child.kill('SIGTERM');
    await p.waitForLine(/"msg":"shutting down"/);
    // It takes no new connections now...
    await until('the listener to close', async () => fetch(`${ready.url}/healthz`).then(() => false, () => true));
    // ...but the request it holds still gets its answer.
    inFlight!.end(body.subarray(10));
    const res = await response;
    expect(res.status).toBe(201);
    const job = JSON.parse(res.text) as { id: string };
    expect(await p.exited).toEqual({ code: 0, signal: null });
    expect(dataDirLockHeld(dataDir)).toBe(false);

    // What the drained request wrote is on disk.
    const again = start({ GANTRY_DATA_DIR: dataDir });
    const ready2 = await again.ready;
    const read = await new ApiClient({ baseUrl: ready2.url, token: key }).get<{ id: string; name: string }>(`/v1/jobs/${job.id}`);
    expect(read).toMatchObject({ id: job.id, name: 'in-flight' });
  });
});

describe('HTTPS', () => {
  it('serves HTTPS with GANTRY_TLS_CERT and GANTRY_TLS_KEY', async () => {
    const dir = newDir('tls');
    mkdirSync(dir);
    const cert = join(dir, 'cert.pem');
    const keyFile = join(dir, 'key.pem');
    execFileSync(
      'openssl',
      ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', keyFile, '-out', cert, '-days', '1', '-subj', '/CN=localhost', '-addext', 'subjectAltName=IP:127.0.0.1,DNS:localhost'],
      { stdio: 'ignore' },
    );
    const p = start({ GANTRY_DATA_DIR: 'memory://', GANTRY_TLS_CERT: cert, GANTRY_TLS_KEY: keyFile });
    const ready = await p.ready;
    expect(ready.url).toMatch(/^https:\/\/127\.0\.0\.1:\d+$/);
    expect(p.stdout.find((l) => l.startsWith('Gantry coordinator'))).toMatch(/public URL https:\/\//);
    const url = new URL(ready.url);
    const agent = new HttpsAgent({ ca: readFileSync(cert) });
    const get = (path: string, opts: { agent?: HttpsAgent; headers?: Record<string, string> } = {}) =>
      new Promise<{ status: number; text: string }>((resolve, reject) => {
        const req = httpsRequest({ host: url.hostname, port: url.port, path, ...opts }, (res) => {
          let text = '';
          res.on('data', (d) => (text += d));
          res.on('end', () => resolve({ status: res.statusCode!, text }));
        });
        req.on('error', reject);
        req.end();
      });
    expect(await get('/healthz', { agent })).toEqual({ status: 200, text: '{"status":"ok"}' });
    const jobs = await get('/v1/jobs', { agent, headers: { authorization: `Bearer ${ready.adminKey}` } });
    expect(jobs.status).toBe(200);
    expect(JSON.parse(jobs.text)).toEqual({ items: [], nextCursor: null });
    // Without our CA the certificate is refused: the TLS is real.
    await expect(get('/healthz', { agent: new HttpsAgent({}) })).rejects.toThrow(/self[- ]signed/i);
    // Plain HTTP to the port gets no answer.
    const plain = await new Promise<string>((resolve) => {
      const req = httpRequest({ host: url.hostname, port: url.port, path: '/healthz' }, (res) => resolve(`HTTP ${res.statusCode}`));
      req.on('error', (e) => resolve(`error ${(e as NodeJS.ErrnoException).code}`));
      req.end();
    });
    expect(plain).not.toBe('HTTP 200');
  });
});

describe('request log', () => {
  it('writes one structured line per request: method, route, status, duration, and no key', async () => {
    const p = start({ GANTRY_DATA_DIR: 'memory://' });
    const ready = await p.ready;
    const adminKey = ready.adminKey!;
    const { key, api } = await clientAccount(ready.url, adminKey); // 2 requests
    const job = await api.post<{ id: string }>('/v1/jobs', hello); // 201
    const calls: [string, string, Record<string, string>, number][] = [
      ['GET', `/v1/jobs/${job.id}`, { authorization: `Bearer ${key}` }, 200],
      ['GET', '/v1/jobs/not-an-id', { authorization: `Bearer ${key}` }, 400],
      ['GET', '/v1/jobs', { authorization: `Bearer ${key}x` }, 401],
      ['POST', '/v1/jobs', { authorization: `Bearer ${key}`, 'content-type': 'text/plain' }, 415],
      ['GET', '/v1/no-such-thing', {}, 404],
    ];
    for (const [method, path, headers, status] of calls) {
      const res = await fetch(`${ready.url}${path}`, { method, headers, ...(method === 'POST' ? { body: 'x' } : {}) });
      expect(res.status).toBe(status);
      await res.arrayBuffer();
    }
    const total = 3 + calls.length;
    const requestLines = () => p.stdout.filter((l) => l.startsWith('{') && JSON.parse(l).msg === 'request');
    await until('a log line per request', () => requestLines().length >= total);
    const lines = requestLines();
    expect(lines).toHaveLength(total);
    const records = lines.map((l) => JSON.parse(l) as Record<string, unknown>);
    expect(records.map((r) => [r.method, r.route, r.status])).toEqual([
      ['POST', '/v1/accounts', 201],
      ['POST', '/v1/accounts/:id/keys', 201],
      ['POST', '/v1/jobs', 201],
      ['GET', '/v1/jobs/:id', 200],
      ['GET', '/v1/jobs/:id', 400],
      ['GET', '/v1/jobs', 401],
      ['POST', '/v1/jobs', 415],
      ['GET', '(no route)', 404],
    ]);
    for (const r of records) {
      expect(r).toMatchObject({ t: expect.any(String), level: 'info', ms: expect.any(Number) });
      expect(r.ms as number).toBeGreaterThanOrEqual(0);
    }
    // No secret, and no path with ids in it, in any log line.
    const logText = p.stdout.filter((l) => l.startsWith('{')).join('\n');
    for (const secret of [adminKey, key, key.slice(key.indexOf('_', 3) + 1), 'Bearer', job.id]) expect(logText).not.toContain(secret);
    expect(logText.toLowerCase()).not.toContain('authorization');
  });
});

const postgresSkip = await postgresSkipReason('postgres e2e tests');

describe.skipIf(postgresSkip)('PostgreSQL: two coordinators started at the same moment on one fresh database', () => {
  it('both come up, exactly one admin account exists, and both serve the same data', async () => {
    const name = `gantry_e2e_${randomBytes(6).toString('hex')}`;
    const admin = postgres(postgresAdminUrl, { max: 1, onnotice: () => {} });
    await admin.unsafe(`create database ${name}`);
    const url = postgresAdminUrl.replace(/\/[^/]*$/, `/${name}`);
    const db = postgres(url, { max: 1, onnotice: () => {} });
    try {
      const env = { DATABASE_URL: url, GANTRY_DB_POOL_SIZE: '4' };
      const a = start(env);
      const b = start(env);
      const [ra, rb] = await Promise.all([a.ready, b.ready]);
      expect(a.stdout.find((l) => l.startsWith('Gantry coordinator'))).toContain('database: PostgreSQL');
      const keys = [ra.adminKey, rb.adminKey].filter((k): k is string => k !== null);
      expect(keys).toHaveLength(1);
      const admins = await db<{ n: number }[]>`select count(*)::int as n from accounts where is_admin`;
      expect(admins[0]!.n).toBe(1);
      const migrations = readdirSync(migrationsFolder).filter((f) => f.endsWith('.sql')).length;
      const applied = await db<{ n: number }[]>`select count(*)::int as n from drizzle.__drizzle_migrations`;
      expect(applied[0]!.n).toBe(migrations);

      // Submit through one, read, list, cancel and see the events through the other.
      const { key, api: viaA } = await clientAccount(ra.url, keys[0]!);
      const viaB = new ApiClient({ baseUrl: rb.url, token: key });
      const job = await viaA.post<{ id: string }>('/v1/jobs', hello);
      expect(await viaB.get<{ id: string; status: string }>(`/v1/jobs/${job.id}`)).toMatchObject({ id: job.id, status: 'queued' });
      expect((await viaB.get<{ items: { id: string }[] }>('/v1/jobs')).items.map((j) => j.id)).toEqual([job.id]);
      expect((await viaB.post<{ status: string }>(`/v1/jobs/${job.id}/cancel`)).status).toBe('cancelled');
      const events = await viaA.get<{ items: { to: string }[] }>(`/v1/jobs/${job.id}/events`);
      expect(events.items.map((e) => e.to)).toEqual(['queued', 'cancelled']);

      await Promise.all([a.stop(), b.stop()]);
      expect((await a.exited).code).toBe(0);
      expect((await b.exited).code).toBe(0);
    } finally {
      await db.end({ timeout: 1 });
      await admin.unsafe(`drop database if exists ${name} with (force)`);
      await admin.end({ timeout: 5 });
    }
  });
});
