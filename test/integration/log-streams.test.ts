// Long-lived answers and their credentials: log streams end when their key is revoked or
// expires, at their longest life, past the caps; a node's long-poll ends when it is retired;
// and many followers of one job cost the database no query each.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { eq } from 'drizzle-orm';
import { apiKeys } from '../../coordinator/db/schema/index.ts';
import { changeStatus } from '../../coordinator/jobs/lifecycle.ts';
import { createTestNode, leaseTo, type TestNode } from '../support/agent-fixture.ts';
import { loadConfig } from '../../coordinator/config.ts';
import { openDatabase } from '../../coordinator/db/open.ts';
import { silentLogger } from '../../coordinator/log.ts';
import { startCoordinator } from '../../coordinator/server.ts';
import { dbSkipReason, itOn, startHarness, type Harness } from '../support/harness.ts';
import { expectProblem } from '../support/problem.ts';
import { until } from '../support/until.ts';

const spec = { name: 'follow-me', image: 'busybox:latest', command: ['true'], resources: { cpu: 1, memoryMb: 64 } };
/** A job no node can take: it stays queued. */
const unplaceable = { ...spec, resources: { cpu: 1, memoryMb: 64, gpus: 1, gpu: { model: 'NoSuchGPU' } } };
const postJson = (body: unknown) => ({ method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
const chunk = (seq: number, lines: string[]) => ({ epoch: 1, seq, stream: 'stdout', at: new Date().toISOString(), lines });

interface SseEvent {
  event?: string;
  id?: string;
  data?: string;
}

/** An open SSE answer, read in the background: its events so far, and whether it has closed. */
interface OpenStream {
  status: number;
  response: Response;
  events: SseEvent[];
  closed: Promise<void>;
  isClosed(): boolean;
  end(): SseEvent | undefined;
  cancel(): Promise<void>;
}

async function openStream(h: Harness, path: string, key: string, headers: Record<string, string> = {}): Promise<OpenStream> {
  const abort = new AbortController();
  const response = await h.fetch(path, { key, headers, signal: abort.signal });
  const events: SseEvent[] = [];
  let closedNow = false;
  let closed: Promise<void> = Promise.resolve();
  if (response.ok && response.body) {
    closed = (async () => {
      let text = '';
      try {
        for await (const piece of response.body!.pipeThrough(new TextDecoderStream())) {
          text += piece;
          let cut: number;
          while ((cut = text.indexOf('\n\n')) >= 0) {
            const block = text.slice(0, cut);
            text = text.slice(cut + 2);
            const e: SseEvent = {};
            for (const line of block.split('\n')) {
              if (line.startsWith(':')) continue;
              const at = line.indexOf(':');
              (e as Record<string, string>)[line.slice(0, at)] = line.slice(at + 2);
            }
            if (Object.keys(e).length) events.push(e);
          }
        }
      } catch {
        // cancelled
      }
      closedNow = true;
    })();
  }
  return {
    status: response.status,
    response,
    events,
    closed,
    isClosed: () => closedNow,
    end: () => events.find((e) => e.event === 'end'),
    async cancel() {
      abort.abort();
      await closed;
    },
  };
}

const endOf = (s: OpenStream) => JSON.parse(s.end()!.data!) as { reason: string; status?: string; detail?: string };

describe.skipIf(dbSkipReason)('log streams: credentials, caps and longest life', () => {
  let h: Harness;
  let node: TestNode;

  beforeAll(async () => {
    h = await startHarness({ GANTRY_LOG_STREAMS_PER_KEY: '2', GANTRY_LOG_STREAMS_MAX: '3' });
    const provider = await h.newAccount('provider');
    node = await createTestNode(h, provider.accountId);
  });
  afterAll(async () => h?.close());

  async function runningJob(key: string) {
    const job = await h.client(key).post<{ id: string }>('/v1/jobs', spec);
    await leaseTo(h, job.id, node.nodeId);
    return job.id;
  }

  it('ends an open stream within seconds of its key being revoked, with an end event saying so', async () => {
    const owner = await h.newAccount('client');
    const key = await h.admin.post<{ id: string; key: string }>(`/v1/accounts/${owner.accountId}/keys`, { scopes: ['client'] });
    const jobId = await runningJob(owner.key);
    await node.fetch(`/v1/agent/jobs/${jobId}/logs`, postJson(chunk(0, ['before'])));
    const s = await openStream(h, `/v1/jobs/${jobId}/logs?follow=1`, key.key);
    expect(s.status).toBe(200);
    await until('the first chunk', () => s.events.some((e) => e.event === 'log'), 10_000);
    const revokedAt = Date.now();
    await h.admin.delete(`/v1/keys/${key.id}`);
    await until('the stream closed', () => s.isClosed(), 5000);
    expect(Date.now() - revokedAt).toBeLessThan(5000);
    expect(endOf(s)).toMatchObject({ reason: 'revoked' });
    // Nothing after the end: a chunk stored later is not sent on the dead stream.
    expect(s.events.at(-1)!.event).toBe('end');
  });

  itOn('postgres')('ends a stream open on another replica when the key is revoked here', async () => {
    const database = await openDatabase({ databaseUrl: h.testDb.url!, poolSize: 2 });
    const replica = await startCoordinator({
      config: loadConfig({ PORT: '0', HOST: '127.0.0.1', GANTRY_LOG_REQUESTS: 'false', GANTRY_SHUTDOWN_GRACE_MS: '2000' }),
      log: silentLogger,
      database,
    });
    try {
      const owner = await h.newAccount('client');
      const key = await h.admin.post<{ id: string; key: string }>(`/v1/accounts/${owner.accountId}/keys`, { scopes: ['client'] });
      const jobId = await runningJob(owner.key);
      const abort = new AbortController();
      const res = await fetch(new URL(`/v1/jobs/${jobId}/logs?follow=1`, replica.url), { headers: { authorization: `Bearer ${key.key}` }, signal: abort.signal });
      expect(res.status).toBe(200);
      const text = res.text();
      await until('the stream held on the replica', () => replica.deps.logFollowers.count === 1, 5000);
      const revokedAt = Date.now();
      await h.admin.delete(`/v1/keys/${key.id}`);
      const body = await text;
      expect(Date.now() - revokedAt).toBeLessThan(5000);
      expect(body).toMatch(/event: end\ndata: \{"reason":"revoked"/);
    } finally {
      await replica.close();
      await database.close();
    }
  });

  it('ends an open stream when its key expires, and refuses to open one with an expired key (401)', async () => {
    const owner = await h.newAccount('client');
    const key = await h.admin.post<{ id: string; key: string }>(`/v1/accounts/${owner.accountId}/keys`, { scopes: ['client'], expiresInSeconds: 60 });
    const jobId = await runningJob(owner.key);
    const s = await openStream(h, `/v1/jobs/${jobId}/logs?follow=1`, key.key);
    expect(s.status).toBe(200);
    // Its time comes (written straight into the row: no test waits a minute).
    await h.testDb.database.db.update(apiKeys).set({ expiresAt: new Date(Date.now() - 1000) }).where(eq(apiKeys.id, key.id));
    await until('the stream closed', () => s.isClosed(), 10_000);
    expect(endOf(s)).toMatchObject({ reason: 'expired' });
    await expectProblem(await h.fetch(`/v1/jobs/${jobId}/logs?follow=1`, { key: key.key }), {
      status: 401,
      code: 'unauthenticated',
      title: 'Authentication required',
      detail: 'expired',
    });
  });

  it('refuses a stream past the per-key and the overall cap with 429 and Retry-After, and takes one again once a stream closes', async () => {
    const a = await h.newAccount('client');
    const b = await h.newAccount('client');
    const jobA = await runningJob(a.key);
    const jobB = await runningJob(b.key);
    const open: OpenStream[] = [];
    try {
      for (let i = 0; i < 2; i++) open.push(await openStream(h, `/v1/jobs/${jobA}/logs?follow=1`, a.key));
      expect(open.map((s) => s.status)).toEqual([200, 200]);
      const overKey = await h.fetch(`/v1/jobs/${jobA}/logs?follow=1`, { key: a.key });
      expect(overKey.headers.get('retry-after')).toMatch(/^\d+$/);
      await expectProblem(overKey, { status: 429, code: 'rate_limited', title: 'Too many requests', detail: 'this key' });
      // The page form is not a stream: it is not capped.
      expect((await h.fetch(`/v1/jobs/${jobA}/logs`, { key: a.key })).status).toBe(200);

      open.push(await openStream(h, `/v1/jobs/${jobB}/logs?follow=1`, b.key));
      expect(open[2]!.status).toBe(200);
      const overAll = await h.fetch(`/v1/jobs/${jobB}/logs?follow=1`, { key: b.key });
      expect(overAll.headers.get('retry-after')).toMatch(/^\d+$/);
      await expectProblem(overAll, { status: 429, code: 'rate_limited', title: 'Too many requests', detail: 'coordinator' });

      await open.shift()!.cancel();
      await until('a slot free again', () => h.coordinator.deps.logFollowers.count < 3, 5000);
      const again = await openStream(h, `/v1/jobs/${jobB}/logs?follow=1`, b.key);
      open.push(again);
      expect(again.status).toBe(200);
      // A refused follow of a job the key cannot see takes no slot either.
      const other = await h.newAccount('client');
      await open.shift()!.cancel();
      await until('a slot free again', () => h.coordinator.deps.logFollowers.count < 3, 5000);
      expect((await h.fetch(`/v1/jobs/${jobA}/logs?follow=1`, { key: other.key })).status).toBe(404);
      expect(h.coordinator.deps.logFollowers.count).toBe(2);
    } finally {
      await Promise.all(open.map((s) => s.cancel()));
    }
  });

  it("ends a node's waiting long-poll within seconds of its retirement, with a 401 saying why", async () => {
    const provider = await h.newAccount('provider');
    const idle = await createTestNode(h, provider.accountId);
    const started = Date.now();
    const poll = idle.fetch('/v1/agent/work?wait=60');
    // The long-poll is waiting before the node is retired.
    await until('the long-poll waiting', () => h.coordinator.deps.leases.notifier.waiting > 0, 10_000);
    const retired = await provider.api.delete<{ status: string }>(`/v1/nodes/${idle.nodeId}`);
    expect(retired.status).toBe('retired');
    const res = await poll;
    expect(Date.now() - started).toBeLessThan(15_000);
    await expectProblem(res, { status: 401, code: 'unauthenticated', title: 'Authentication required', detail: 'retired' });
  });

  itOn('postgres')("ends a node's long-poll waiting on another replica within seconds of its retirement", async () => {
    const database = await openDatabase({ databaseUrl: h.testDb.url!, poolSize: 2 });
    const replica = await startCoordinator({
      config: loadConfig({ PORT: '0', HOST: '127.0.0.1', GANTRY_LOG_REQUESTS: 'false', GANTRY_SHUTDOWN_GRACE_MS: '2000' }),
      log: silentLogger,
      database,
    });
    try {
      const provider = await h.newAccount('provider');
      const idle = await createTestNode(h, provider.accountId);
      const poll = fetch(new URL('/v1/agent/work?wait=60', replica.url), { headers: { authorization: `Bearer ${await idle.token()}` } });
      await until('the long-poll waiting on the replica', () => replica.deps.leases.notifier.waiting > 0, 10_000);
      const retiredAt = Date.now();
      await provider.api.delete(`/v1/nodes/${idle.nodeId}`);
      const res = await poll;
      expect(Date.now() - retiredAt).toBeLessThan(10_000);
      await expectProblem(res, { status: 401, code: 'unauthenticated', title: 'Authentication required', detail: 'retired' });
    } finally {
      await replica.close();
      await database.close();
    }
  });
});

describe.skipIf(dbSkipReason)('log streams: longest life', () => {
  let h: Harness;
  let node: TestNode;
  beforeAll(async () => {
    h = await startHarness({ GANTRY_LOG_STREAM_MAX_SECONDS: '2' });
    const provider = await h.newAccount('provider');
    node = await createTestNode(h, provider.accountId);
  });
  afterAll(async () => h?.close());

  async function runningJob(key: string) {
    const job = await h.client(key).post<{ id: string }>('/v1/jobs', spec);
    await leaseTo(h, job.id, node.nodeId);
    return job.id;
  }

  it('ends a stream at its longest life with an end event; resuming from its last id loses and repeats nothing', async () => {
    const owner = await h.newAccount('client');
    const jobId = await runningJob(owner.key);
    const send = (seq: number, line: string) => node.fetch(`/v1/agent/jobs/${jobId}/logs`, postJson(chunk(seq, [line])));
    await send(0, 'zero');
    const first = await openStream(h, `/v1/jobs/${jobId}/logs?follow=1`, owner.key);
    await until('the first chunk', () => first.events.some((e) => e.event === 'log'), 10_000);
    await send(1, 'one');
    await until('the stream closed at its longest life', () => first.isClosed(), 10_000);
    expect(endOf(first)).toMatchObject({ reason: 'max-life' });
    const seen = first.events.filter((e) => e.event === 'log').map((e) => e.id!);
    expect(seen).toEqual(['0', '1']);
    await send(2, 'two');
    await h.coordinator.deps.database.db.transaction((tx) => changeStatus(tx, jobId, ['running'], 'succeeded', 'test', { exitCode: 0, finishedAt: new Date() }));
    const resumed = await openStream(h, `/v1/jobs/${jobId}/logs?follow=1`, owner.key, { 'last-event-id': seen.at(-1)! });
    await resumed.closed;
    expect(resumed.events.map((e) => e.event)).toEqual(['log', 'end']);
    expect(resumed.events[0]!.id).toBe('2');
    expect(endOf(resumed)).toMatchObject({ reason: 'ended', status: 'succeeded' });
  });
});

describe.skipIf(dbSkipReason)('log streams: many followers of one job', () => {
  let h: Harness;
  let node: TestNode;
  beforeAll(async () => {
    h = await startHarness({ GANTRY_LOG_STREAMS_PER_KEY: '1000' });
    const provider = await h.newAccount('provider');
    node = await createTestNode(h, provider.accountId);
  });
  afterAll(async () => h?.close());

  it('holds 200 followers of a queued job without a query per follower, then hands each every chunk and the end', async () => {
    const owner = await h.newAccount('client');
    const job = await h.client(owner.key).post<{ id: string; status: string }>('/v1/jobs', unplaceable);
    expect(job.status).toBe('queued');
    const followers = 200;
    const streams = await Promise.all(Array.from({ length: followers }, () => openStream(h, `/v1/jobs/${job.id}/logs?follow=1`, owner.key)));
    expect(streams.every((s) => s.status === 200)).toBe(true);
    await until('every follower held', () => h.coordinator.deps.logFollowers.count === followers, 20_000);

    const database = h.coordinator.deps.database;
    const before = database.queries;
    const windowStart = Date.now();
    await until('three seconds of waiting', () => Date.now() - windowStart >= 3000 && database.queries, 10_000);
    const perSecond = ((database.queries - before) * 1000) / (Date.now() - windowStart);
    // A query per follower per second would be 200/s; one poll for the job (plus the
    // coordinator's own loops) is a handful.
    expect(perSecond).toBeLessThan(20);

    await leaseTo(h, job.id, node.nodeId);
    expect((await node.fetch(`/v1/agent/jobs/${job.id}/logs`, postJson(chunk(0, ['hello'])))).status).toBe(200);
    await until('every follower has the chunk', () => streams.every((s) => s.events.some((e) => e.event === 'log')), 20_000);
    await h.coordinator.deps.database.db.transaction((tx) =>
      changeStatus(tx, job.id, ['running'], 'failed', 'test', { exitCode: 2, finishedAt: new Date() }),
    );
    await Promise.all(streams.map((s) => s.closed));
    for (const s of streams) {
      expect(s.events.map((e) => `${e.event}:${e.id ?? ''}`)).toEqual(['log:0', 'end:']);
      expect(endOf(s)).toMatchObject({ reason: 'ended', status: 'failed' });
    }
    await until('every slot given back', () => h.coordinator.deps.logFollowers.count === 0, 5000);
  });
});
