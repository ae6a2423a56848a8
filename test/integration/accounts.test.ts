import { createHash } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { eq, sql } from 'drizzle-orm';
import { loadConfig } from '../../coordinator/config.ts';
import { openDatabase } from '../../coordinator/db/open.ts';
import { apiKeys } from '../../coordinator/db/schema/index.ts';
import { silentLogger } from '../../coordinator/log.ts';
import { startCoordinator } from '../../coordinator/server.ts';
import { ApiClient } from '../../shared/client.ts';
import { snapshot } from '../support/db-snapshot.ts';
import { dbSkipReason, itOn, startHarness, type Harness } from '../support/harness.ts';
import { expectProblem } from '../support/problem.ts';
import { until } from '../support/until.ts';

const hello = { name: 'hello', image: 'busybox:latest', command: ['echo', 'hi'], resources: { cpu: 1, memoryMb: 128, gpus: 0 } };
const json = { 'content-type': 'application/json' };

interface CreatedKey {
  id: string;
  accountId: string;
  key: string;
  prefix: string;
  scopes: string[];
  name: string | null;
  revokedAt: string | null;
  lastUsedAt: string | null;
  expiresAt: string | null;
  createdByKeyId: string | null;
  createdAt: string;
}

/** Polls until check() holds or the deadline passes. */
async function eventually<T>(check: () => Promise<T | undefined | null | false>, timeoutMs = 5000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await check();
    if (v) return v;
    if (Date.now() > deadline) throw new Error('condition not met before the deadline');
    await new Promise((r) => setTimeout(r, 25));
  }
}

describe.skipIf(dbSkipReason)('accounts and API keys', () => {
  let h: Harness;
  beforeAll(async () => {
    h = await startHarness();
  });
  afterAll(async () => h?.close());

  it('lets the admin create accounts of each kind', async () => {
    for (const kind of ['client', 'provider', 'both'] as const) {
      const res = await h.admin.raw('POST', '/v1/accounts', { headers: json, body: JSON.stringify({ name: `acme-${kind}`, kind }) });
      expect(res.status).toBe(201);
      const account = (await res.json()) as { id: string; name: string; kind: string; createdAt: string };
      expect(account).toEqual({ id: expect.stringMatching(/^acct_[0-9a-z]{22}$/), name: `acme-${kind}`, kind, createdAt: expect.any(String) });
      const rows = await h.testDb.database.rows<{ name: string; kind: string; is_admin: boolean }>(
        sql`select name, kind, is_admin from accounts where id = ${account.id}`,
      );
      expect(rows).toEqual([{ name: `acme-${kind}`, kind, is_admin: false }]);
    }
  });

  it('refuses account creation to a key without the admin scope', async () => {
    const { key } = await h.newAccount('both');
    const before = await snapshot(h.testDb.database);
    const res = await h.client(key).raw('POST', '/v1/accounts', { headers: json, body: JSON.stringify({ name: 'mine', kind: 'client' }) });
    await expectProblem(res, { status: 403, code: 'forbidden', title: 'Forbidden', detail: 'admin' });
    expect(await snapshot(h.testDb.database)).toEqual(before);
  });

  it('returns a key once and keeps only its hash, with a short prefix for look-up', async () => {
    const { accountId } = await h.newAccount('client');
    const created = await h.admin.post<CreatedKey>(`/v1/accounts/${accountId}/keys`, { name: 'ci', scopes: ['client'] });
    expect(created).toMatchObject({ accountId, name: 'ci', scopes: ['client'], revokedAt: null, lastUsedAt: null });
    const [, prefix, secret] = created.key.match(/^gk_([0-9a-z]{12})_([A-Za-z0-9_-]{43})$/)!;
    expect(created.prefix).toBe(prefix);
    const rows = await h.testDb.database.db.select().from(apiKeys).where(eq(apiKeys.id, created.id));
    expect(rows).toHaveLength(1);
    expect(rows[0]!.hash).toBe(createHash('sha256').update(secret!).digest('hex'));
    // Neither the key nor its secret is anywhere in the row.
    const text = JSON.stringify(rows[0]);
    expect(text).not.toContain(secret);
    expect(text).not.toContain(created.key);
    // The key works.
    expect((await h.client(created.key).post<{ status: string }>('/v1/jobs', hello)).status).toBe('queued');
  });

  it('records last_used_at when a key is used', async () => {
    const { key, accountId } = await h.newAccount('client');
    await h.client(key).get('/v1/jobs');
    const row = await eventually(async () => {
      const [r] = await h.testDb.database.db.select().from(apiKeys).where(eq(apiKeys.accountId, accountId));
      return r?.lastUsedAt ? r : null;
    });
    expect(row.lastUsedAt!.getTime()).toBeGreaterThan(row.createdAt.getTime() - 1000);
  });

  it("lets an account's own key create keys for it, with scopes it holds", async () => {
    const both = await h.newAccount('both', ['client', 'provider']);
    const created = await both.api.post<CreatedKey>(`/v1/accounts/${both.accountId}/keys`, { scopes: ['provider'] });
    expect(created.scopes).toEqual(['provider']);
    expect((await h.client(created.key).raw('GET', '/v1/jobs')).status).toBe(403);
  });

  it("refuses a non-admin key another account's keys, as if the account did not exist", async () => {
    const alice = await h.newAccount('client');
    const bob = await h.newAccount('client');
    const before = await snapshot(h.testDb.database);
    const res = await bob.api.raw('POST', `/v1/accounts/${alice.accountId}/keys`, { headers: json, body: JSON.stringify({ scopes: ['client'] }) });
    const theirs = await expectProblem(res, { status: 404, code: 'not_found', title: 'Not found', detail: 'account not found' });
    expect(await snapshot(h.testDb.database)).toEqual(before);
    const none = await bob.api.raw('POST', '/v1/accounts/acct_0000000000000000000000/keys', {
      headers: json,
      body: JSON.stringify({ scopes: ['client'] }),
    });
    expect((await expectProblem(none, { status: 404, code: 'not_found', title: 'Not found' })).detail).toBe(theirs.detail);
  });

  it('refuses a non-admin key a scope it does not hold itself', async () => {
    const both = await h.newAccount('both', ['client']);
    for (const scopes of [['provider'], ['client', 'provider'], ['admin']]) {
      const before = await snapshot(h.testDb.database);
      const res = await both.api.raw('POST', `/v1/accounts/${both.accountId}/keys`, { headers: json, body: JSON.stringify({ scopes }) });
      await expectProblem(res, { status: 403, code: 'forbidden', title: 'Forbidden', detail: 'scopes it holds' });
      expect(await snapshot(h.testDb.database)).toEqual(before);
    }
  });

  it("refuses even the admin a scope the account's kind cannot hold, and the admin scope on a tenant", async () => {
    const client = await h.newAccount('client');
    const before = await snapshot(h.testDb.database);
    const res = await h.admin.raw('POST', `/v1/accounts/${client.accountId}/keys`, { headers: json, body: JSON.stringify({ scopes: ['provider'] }) });
    await expectProblem(res, { status: 400, code: 'validation', title: 'Invalid request', errors: [{ path: 'scopes', message: 'provider' }] });
    const admin = await h.admin.raw('POST', `/v1/accounts/${client.accountId}/keys`, { headers: json, body: JSON.stringify({ scopes: ['admin'] }) });
    await expectProblem(admin, { status: 403, code: 'forbidden', title: 'Forbidden', detail: 'admin' });
    expect(await snapshot(h.testDb.database)).toEqual(before);
  });

  it('revokes a key with DELETE /v1/keys/:id: it gets 401 right after', async () => {
    const { accountId } = await h.newAccount('client');
    const created = await h.admin.post<CreatedKey>(`/v1/accounts/${accountId}/keys`, { scopes: ['client'] });
    const api = h.client(created.key);
    expect((await api.raw('GET', '/v1/jobs')).status).toBe(200);
    const revoked = await h.admin.delete<CreatedKey>(`/v1/keys/${created.id}`);
    expect(revoked).toMatchObject({ id: created.id, revokedAt: expect.any(String) });
    expect('key' in revoked).toBe(false);
    await expectProblem(await api.raw('GET', '/v1/jobs'), { status: 401, code: 'unauthenticated', title: 'Authentication required' });
    const [row] = await h.testDb.database.db.select().from(apiKeys).where(eq(apiKeys.id, created.id));
    expect(row!.revokedAt).not.toBeNull();
    // Revoking again changes nothing and answers the same.
    const again = await h.admin.delete<CreatedKey>(`/v1/keys/${created.id}`);
    expect(again.revokedAt).toBe(revoked.revokedAt);
  });

  it('lets a key revoke its own account’s keys, itself included, and no one else’s', async () => {
    const alice = await h.newAccount('client');
    const bob = await h.newAccount('client');
    const second = await alice.api.post<CreatedKey>(`/v1/accounts/${alice.accountId}/keys`, { scopes: ['client'] });
    const before = await snapshot(h.testDb.database);
    const res = await bob.api.raw('DELETE', `/v1/keys/${second.id}`);
    await expectProblem(res, { status: 404, code: 'not_found', title: 'Not found', detail: 'key not found' });
    expect(await snapshot(h.testDb.database)).toEqual(before);
    expect((await h.client(second.key).raw('GET', '/v1/jobs')).status).toBe(200);
    await h.client(second.key).delete(`/v1/keys/${second.id}`);
    expect((await h.client(second.key).raw('GET', '/v1/jobs')).status).toBe(401);
    expect((await alice.api.raw('GET', '/v1/jobs')).status).toBe(200);
  });

  it('refuses a key past its expiry like a revoked one (401), cached or not', async () => {
    const { accountId } = await h.newAccount('client');
    const db = h.testDb.database.db;
    const made = Date.now();
    const soon = await h.admin.post<CreatedKey>(`/v1/accounts/${accountId}/keys`, { scopes: ['client'], expiresInSeconds: 60 });
    const expiry = Date.parse(soon.expiresAt!);
    expect(expiry).toBeGreaterThanOrEqual(made + 59_000);
    expect(expiry).toBeLessThanOrEqual(Date.now() + 61_000);
    const never = await h.admin.post<CreatedKey>(`/v1/accounts/${accountId}/keys`, { scopes: ['client'] });
    expect(never.expiresAt).toBeNull();

    // Its time comes before it is ever used: refused at once.
    await db.update(apiKeys).set({ expiresAt: new Date(Date.now() - 1000) }).where(eq(apiKeys.id, soon.id));
    await expectProblem(await h.client(soon.key).raw('GET', '/v1/jobs'), { status: 401, code: 'unauthenticated', title: 'Authentication required', detail: 'expired' });

    // A key in use (and so in the verified-key cache) is refused once its time is up.
    const used = await h.admin.post<CreatedKey>(`/v1/accounts/${accountId}/keys`, { scopes: ['client'], expiresInSeconds: 60 });
    expect((await h.client(used.key).raw('GET', '/v1/jobs')).status).toBe(200);
    await db.update(apiKeys).set({ expiresAt: new Date(Date.now() - 1000) }).where(eq(apiKeys.id, used.id));
    await until('the expired key refused', async () => (await h.client(used.key).raw('GET', '/v1/jobs')).status === 401, 10_000);
    expect((await h.client(never.key).raw('GET', '/v1/jobs')).status).toBe(200);

    const bad = await h.admin.raw('POST', `/v1/accounts/${accountId}/keys`, { headers: json, body: JSON.stringify({ scopes: ['client'], expiresInSeconds: 5 }) });
    await expectProblem(bad, { status: 400, code: 'validation', title: 'Invalid request', errors: [{ path: 'expiresInSeconds' }] });
  });

  it("lists an account's keys, with which key made each, to the account and the admin only", async () => {
    const alice = await h.newAccount('both', ['client', 'provider']);
    const bob = await h.newAccount('client');
    const made = await alice.api.post<CreatedKey>(`/v1/accounts/${alice.accountId}/keys`, { name: 'ci', scopes: ['client'], expiresInSeconds: 3600 });
    await h.client(made.key).get('/v1/jobs');
    await h.client(made.key).delete(`/v1/keys/${made.id}`);

    const page = await alice.api.get<{ items: CreatedKey[]; nextCursor: string | null }>(`/v1/accounts/${alice.accountId}/keys`);
    expect(page.nextCursor).toBeNull();
    expect(page.items).toHaveLength(2);
    const [first, second] = page.items;
    // The first key was made by the admin (through the harness), the second by the first.
    const adminKeyId = first!.createdByKeyId;
    expect(adminKeyId).toMatch(/^key_/);
    expect(second).toEqual({
      id: made.id,
      accountId: alice.accountId,
      name: 'ci',
      prefix: made.prefix,
      scopes: ['client'],
      createdAt: made.createdAt,
      lastUsedAt: expect.any(String),
      revokedAt: expect.any(String),
      expiresAt: made.expiresAt,
      createdByKeyId: first!.id,
    });
    expect(JSON.stringify(page)).not.toContain(made.key.split('_')[2]);
    // One per page, with a cursor.
    const one = await alice.api.get<{ items: CreatedKey[]; nextCursor: string | null }>(`/v1/accounts/${alice.accountId}/keys?limit=1`);
    expect(one.items.map((k) => k.id)).toEqual([first!.id]);
    const rest = await alice.api.get<{ items: CreatedKey[] }>(`/v1/accounts/${alice.accountId}/keys?limit=1&cursor=${one.nextCursor}`);
    expect(rest.items.map((k) => k.id)).toEqual([made.id]);

    expect((await h.admin.get<{ items: CreatedKey[] }>(`/v1/accounts/${alice.accountId}/keys`)).items).toHaveLength(2);
    await expectProblem(await bob.api.raw('GET', `/v1/accounts/${alice.accountId}/keys`), { status: 404, code: 'not_found', title: 'Not found', detail: 'account not found' });
    await expectProblem(await h.client().raw('GET', `/v1/accounts/${alice.accountId}/keys`), { status: 401, code: 'unauthenticated', title: 'Authentication required' });
  });

  it('revokes with cascade=true every key a key made, down the line, and nothing else', async () => {
    const acct = await h.newAccount('client');
    const child = await acct.api.post<CreatedKey>(`/v1/accounts/${acct.accountId}/keys`, { scopes: ['client'] });
    const grandchild = await h.client(child.key).post<CreatedKey>(`/v1/accounts/${acct.accountId}/keys`, { scopes: ['client'] });
    const sibling = await h.admin.post<CreatedKey>(`/v1/accounts/${acct.accountId}/keys`, { scopes: ['client'] });
    const other = await h.newAccount('client');

    // Without cascade only the key goes.
    const lone = await acct.api.post<CreatedKey>(`/v1/accounts/${acct.accountId}/keys`, { scopes: ['client'] });
    const loneChild = await h.client(lone.key).post<CreatedKey>(`/v1/accounts/${acct.accountId}/keys`, { scopes: ['client'] });
    const plain = await h.admin.delete<{ id: string; cascaded: CreatedKey[] }>(`/v1/keys/${lone.id}`);
    expect(plain.cascaded).toEqual([]);
    expect((await h.client(loneChild.key).raw('GET', '/v1/jobs')).status).toBe(200);

    // Another tenant cannot cascade into this account.
    await expectProblem(await other.api.raw('DELETE', `/v1/keys/${child.id}?cascade=true`), { status: 404, code: 'not_found', title: 'Not found' });
    expect((await h.client(grandchild.key).raw('GET', '/v1/jobs')).status).toBe(200);

    const revoked = await acct.api.delete<{ id: string; revokedAt: string; cascaded: CreatedKey[] }>(`/v1/keys/${child.id}?cascade=true`);
    expect(revoked.id).toBe(child.id);
    expect(revoked.cascaded.map((k) => k.id)).toEqual([grandchild.id]);
    expect(revoked.cascaded[0]!.revokedAt).toBe(revoked.revokedAt);
    for (const k of [child, grandchild]) expect((await h.client(k.key).raw('GET', '/v1/jobs')).status).toBe(401);
    for (const k of [sibling, other]) expect((await h.client(k.key).raw('GET', '/v1/jobs')).status).toBe(200);
    expect((await acct.api.raw('GET', '/v1/jobs')).status).toBe(200);
  });

  itOn('postgres')('a key revoked on one replica stops working on another', async () => {
    // A second coordinator on the same PostgreSQL database, with its own pool and key cache.
    const database = await openDatabase({ databaseUrl: h.testDb.url!, poolSize: 2 });
    const replica = await startCoordinator({
      config: loadConfig({ PORT: '0', HOST: '127.0.0.1', GANTRY_LOG_REQUESTS: 'false', GANTRY_SHUTDOWN_GRACE_MS: '2000' }),
      log: silentLogger,
      database,
    });
    try {
      expect(replica.adminKey).toBeNull();
      const { accountId } = await h.newAccount('client');
      const created = await h.admin.post<CreatedKey>(`/v1/accounts/${accountId}/keys`, { scopes: ['client'] });
      const onReplica = new ApiClient({ baseUrl: replica.url, token: created.key });
      expect((await onReplica.raw('GET', '/v1/jobs')).status).toBe(200);
      await h.admin.delete(`/v1/keys/${created.id}`);
      await eventually(async () => (await onReplica.raw('GET', '/v1/jobs')).status === 401, 2000);
    } finally {
      await replica.close();
      await database.close();
    }
  });
});
