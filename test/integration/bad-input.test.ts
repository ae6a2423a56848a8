// Every bad request gets its status and a problem+json body, and changes nothing in the database.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { newId } from '../../shared/ids.ts';
import { snapshot } from '../support/db-snapshot.ts';
import { dbSkipReason, startHarness, type Harness } from '../support/harness.ts';
import { expectProblem } from '../support/problem.ts';

const hello = { name: 'hello', image: 'busybox:latest', command: ['echo', 'hi'], resources: { cpu: 1, memoryMb: 128, gpus: 0 } };
const jsonHeaders = { 'content-type': 'application/json' };
const bodyLimit = 64 * 1024;

describe.skipIf(dbSkipReason)('bad input', () => {
  let h: Harness;
  beforeAll(async () => {
    h = await startHarness({ GANTRY_BODY_LIMIT_BYTES: String(bodyLimit) });
  });
  afterAll(async () => h?.close());

  /** Runs the request and shows that the database is the same afterwards. */
  async function unchanged(request: () => Promise<Response>): Promise<Response> {
    const before = await snapshot(h.testDb.database);
    const res = await request();
    // Read the body first: the request has fully run once its answer is complete.
    const clone = res.clone();
    await clone.arrayBuffer();
    expect(await snapshot(h.testDb.database)).toEqual(before);
    return res;
  }

  const submit = (key: string, body: BodyInit, headers: Record<string, string> = jsonHeaders) =>
    h.fetch('/v1/jobs', { method: 'POST', key, headers, body });

  it('refuses malformed JSON with 400 malformed_json', async () => {
    const { key } = await h.newAccount('client');
    const res = await unchanged(() => submit(key, '{"name": "hello", "image": '));
    await expectProblem(res, { status: 400, code: 'malformed_json', title: 'Malformed JSON', detail: 'not valid JSON' });
  });

  it('refuses wrong types, naming each failing field', async () => {
    const { key } = await h.newAccount('client');
    const body = { ...hello, name: 42, command: 'echo hi', resources: { ...hello.resources, cpu: '1' } };
    const res = await unchanged(() => submit(key, JSON.stringify(body)));
    const problem = await expectProblem(res, {
      status: 400,
      code: 'validation',
      title: 'Invalid request',
      errors: [
        { path: 'name', message: 'expected string' },
        { path: 'command', message: 'expected array' },
        { path: 'resources.cpu', message: 'expected number' },
      ],
    });
    expect(problem.detail).toMatch(/^(name|command|resources\.cpu): /);
  });

  it('refuses out-of-bound numbers, naming each failing field', async () => {
    const { key } = await h.newAccount('client');
    const body = {
      ...hello,
      resources: { cpu: 2000, memoryMb: 1, gpus: 65 },
      timeoutSeconds: 0,
      maxAttempts: 21,
      priority: 5000,
      maxPricePerHour: -1,
    };
    const res = await unchanged(() => submit(key, JSON.stringify(body)));
    await expectProblem(res, {
      status: 400,
      code: 'validation',
      title: 'Invalid request',
      errors: [
        { path: 'resources.cpu', message: '<=1024' },
        { path: 'resources.memoryMb', message: '>=4' },
        { path: 'resources.gpus', message: '<=64' },
        { path: 'timeoutSeconds', message: '>=1' },
        { path: 'maxAttempts', message: '<=20' },
        { path: 'priority', message: '<=1000' },
        { path: 'maxPricePerHour', message: '>=0' },
      ],
    });
  });

  it('refuses over-long strings and arrays', async () => {
    const { key } = await h.newAccount('client');
    const body = { ...hello, name: 'n'.repeat(129), command: Array.from({ length: 257 }, () => 'x') };
    const res = await unchanged(() => submit(key, JSON.stringify(body)));
    await expectProblem(res, {
      status: 400,
      code: 'validation',
      title: 'Invalid request',
      errors: [{ path: 'name' }, { path: 'command' }],
    });
  });

  it('refuses unknown fields, at the top and nested, naming each', async () => {
    const { key } = await h.newAccount('client');
    const body = { ...hello, gpuCount: 1, resources: { ...hello.resources, disk: 10 } };
    const res = await unchanged(() => submit(key, JSON.stringify(body)));
    await expectProblem(res, {
      status: 400,
      code: 'validation',
      title: 'Invalid request',
      errors: [
        { path: 'gpuCount', message: 'unknown field' },
        { path: 'resources.disk', message: 'unknown field' },
      ],
    });
  });

  it('refuses an oversized body with 413', async () => {
    const { key } = await h.newAccount('client');
    const body = JSON.stringify({ ...hello, env: { BIG: 'x'.repeat(bodyLimit) } });
    const res = await unchanged(() => submit(key, body));
    // The rest of the body is never read, so the connection ends with this answer.
    expect(res.headers.get('connection')).toBe('close');
    await expectProblem(res, { status: 413, code: 'payload_too_large', title: 'Payload too large', detail: String(bodyLimit) });
  });

  it('refuses an oversized body sent without a length (chunked) with 413', async () => {
    const { key } = await h.newAccount('client');
    const chunk = new TextEncoder().encode(' '.repeat(16 * 1024));
    let sent = 0;
    const stream = new ReadableStream<Uint8Array>({
      pull(controller) {
        if (sent++ < 8) controller.enqueue(chunk);
        else controller.close();
      },
    });
    const res = await unchanged(() =>
      h.fetch('/v1/jobs', { method: 'POST', key, headers: jsonHeaders, body: stream, duplex: 'half' } as RequestInit & { key: string }),
    );
    await expectProblem(res, { status: 413, code: 'payload_too_large', title: 'Payload too large' });
  });

  it('refuses a body that is not declared as JSON with 415, even when it is JSON', async () => {
    const { key } = await h.newAccount('client');
    const res = await unchanged(() => submit(key, JSON.stringify(hello), { 'content-type': 'text/plain' }));
    await expectProblem(res, { status: 415, code: 'unsupported_media_type', title: 'Unsupported media type', detail: 'application/json' });
  });

  it('refuses a body without any content type with 415, never reading it as empty', async () => {
    const { key } = await h.newAccount('client');
    // A byte body makes fetch send no Content-Type at all.
    const res = await unchanged(() => submit(key, new TextEncoder().encode(JSON.stringify(hello)), {}));
    await expectProblem(res, { status: 415, code: 'unsupported_media_type', title: 'Unsupported media type' });
  });

  it('refuses a request without a key with 401 and a Bearer challenge', async () => {
    const res = await unchanged(() => h.fetch('/v1/jobs', { method: 'POST', headers: jsonHeaders, body: JSON.stringify(hello) }));
    expect(res.headers.get('www-authenticate')).toBe('Bearer');
    await expectProblem(res, { status: 401, code: 'unauthenticated', title: 'Authentication required', detail: 'Bearer' });
  });

  it('refuses a key that is not a Gantry key, and an unknown one, with 401', async () => {
    for (const key of ['not-a-key', `gk_${'a'.repeat(12)}_${'b'.repeat(43)}`]) {
      const res = await unchanged(() => submit(key, JSON.stringify(hello)));
      await expectProblem(res, { status: 401, code: 'unauthenticated', title: 'Authentication required' });
    }
  });

  it('refuses a right prefix with a wrong secret with 401', async () => {
    const { key } = await h.newAccount('client');
    const forged = key.slice(0, -4) + (key.endsWith('AAAA') ? 'BBBB' : 'AAAA');
    const res = await unchanged(() => submit(forged, JSON.stringify(hello)));
    await expectProblem(res, { status: 401, code: 'unauthenticated', title: 'Authentication required' });
  });

  it('refuses a revoked key with 401', async () => {
    const account = await h.newAccount('client');
    const created = await h.admin.post<{ id: string; key: string }>(`/v1/accounts/${account.accountId}/keys`, { scopes: ['client'] });
    // Used once, so that it is known (and cached) before it is revoked.
    expect((await h.fetch('/v1/jobs', { key: created.key })).status).toBe(200);
    await h.admin.delete(`/v1/keys/${created.id}`);
    const res = await unchanged(() => submit(created.key, JSON.stringify(hello)));
    await expectProblem(res, { status: 401, code: 'unauthenticated', title: 'Authentication required', detail: 'revoked' });
  });

  it('refuses a key without the scope with 403', async () => {
    const { key } = await h.newAccount('provider');
    const res = await unchanged(() => submit(key, JSON.stringify(hello)));
    await expectProblem(res, { status: 403, code: 'forbidden', title: 'Forbidden', detail: 'client' });
  });

  it('checks the key before the body: no key and a bad body is 401, not 400', async () => {
    const res = await unchanged(() => h.fetch('/v1/jobs', { method: 'POST', headers: jsonHeaders, body: '{oops' }));
    await expectProblem(res, { status: 401, code: 'unauthenticated', title: 'Authentication required' });
  });

  it("answers another tenant's job id exactly as a job that does not exist: 404", async () => {
    const alice = await h.newAccount('client');
    const bob = await h.newAccount('client');
    const job = await alice.api.post<{ id: string }>('/v1/jobs', hello);
    const missing = newId('job');
    for (const [method, suffix] of [
      ['GET', ''],
      ['POST', '/cancel'],
      ['GET', '/events'],
    ] as const) {
      const theirs = await unchanged(() => h.fetch(`/v1/jobs/${job.id}${suffix}`, { method, key: bob.key }));
      const p1 = await expectProblem(theirs, { status: 404, code: 'not_found', title: 'Not found', detail: 'job not found' });
      const none = await h.fetch(`/v1/jobs/${missing}${suffix}`, { method, key: bob.key });
      const p2 = await expectProblem(none, { status: 404, code: 'not_found', title: 'Not found' });
      expect(p1.detail).toBe(p2.detail);
    }
    expect((await alice.api.get<{ status: string }>(`/v1/jobs/${job.id}`)).status).toBe('queued');
  });

  it('refuses a malformed job id with 400 naming the id', async () => {
    const { key } = await h.newAccount('client');
    for (const [method, path] of [
      ['GET', '/v1/jobs/123'],
      ['POST', '/v1/jobs/acct_0000000000000000000000/cancel'],
      ['GET', `/v1/jobs/job_${'x'.repeat(40)}/events`],
    ] as const) {
      const res = await unchanged(() => h.fetch(path, { method, key }));
      await expectProblem(res, { status: 400, code: 'validation', title: 'Invalid request', errors: [{ path: 'param.id', message: 'not a job id' }] });
    }
  });

  it('refuses a malformed account or key id with 400', async () => {
    const res1 = await unchanged(() =>
      h.admin.raw('POST', '/v1/accounts/nope/keys', { headers: jsonHeaders, body: JSON.stringify({ scopes: ['client'] }) }),
    );
    await expectProblem(res1, { status: 400, code: 'validation', title: 'Invalid request', errors: [{ path: 'param.id' }] });
    const res2 = await unchanged(() => h.admin.raw('DELETE', '/v1/keys/nope'));
    await expectProblem(res2, { status: 400, code: 'validation', title: 'Invalid request', errors: [{ path: 'param.id' }] });
  });

  it('refuses bad list parameters and unknown ones with 400', async () => {
    const { key } = await h.newAccount('client');
    for (const [query, path] of [
      ['limit=0', 'query.limit'],
      ['limit=201', 'query.limit'],
      ['limit=ten', 'query.limit'],
      ['cursor=page2', 'query.cursor'],
      ['status=done', 'query.status'],
      ['state=queued', 'query.state'],
    ] as const) {
      const res = await unchanged(() => h.fetch(`/v1/jobs?${query}`, { key }));
      await expectProblem(res, { status: 400, code: 'validation', title: 'Invalid request', errors: [{ path }] });
    }
  });

  it('refuses an over-long Idempotency-Key with 400', async () => {
    const { key } = await h.newAccount('client');
    const res = await unchanged(() => submit(key, JSON.stringify(hello), { ...jsonHeaders, 'idempotency-key': 'k'.repeat(256) }));
    await expectProblem(res, { status: 400, code: 'validation', title: 'Invalid request', errors: [{ path: 'header.idempotency-key' }] });
  });

  it('refuses bad account and key bodies with 400', async () => {
    const { accountId } = await h.newAccount('client');
    const cases: [string, unknown, string][] = [
      ['/v1/accounts', { name: 'x', kind: 'admin' }, 'kind'],
      ['/v1/accounts', { name: '', kind: 'client' }, 'name'],
      ['/v1/accounts', { name: 'x', kind: 'client', admin: true }, 'admin'],
      [`/v1/accounts/${accountId}/keys`, { scopes: [] }, 'scopes'],
      [`/v1/accounts/${accountId}/keys`, { scopes: ['root'] }, 'scopes.0'],
      [`/v1/accounts/${accountId}/keys`, { scopes: ['client'], expires: 'never' }, 'expires'],
    ];
    for (const [path, body, field] of cases) {
      const res = await unchanged(() => h.admin.raw('POST', path, { headers: jsonHeaders, body: JSON.stringify(body) }));
      await expectProblem(res, { status: 400, code: 'validation', title: 'Invalid request', errors: [{ path: field }] });
    }
  });

  it('answers an unknown route with a 404 problem, with or without a key', async () => {
    const { key } = await h.newAccount('client');
    for (const [method, path, withKey] of [
      ['GET', '/v1/nothing-here', true],
      ['GET', '/v1/nothing-here', false],
      ['GET', '/nothing-here', false],
      ['DELETE', '/v1/jobs', true],
      ['POST', '/v1/jobs/x/y/z', true],
    ] as const) {
      const res = await unchanged(() => h.fetch(path, { method, ...(withKey ? { key } : {}) }));
      await expectProblem(res, { status: 404, code: 'no_route', title: 'No such route', detail: `${method} ${path}` });
    }
  });
});
