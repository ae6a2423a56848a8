import { createHash, randomBytes } from 'node:crypto';
import { gzipSync } from 'node:zlib';
import tarStream from 'tar-stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { eq } from 'drizzle-orm';
import { jobs } from '../../coordinator/db/schema/index.ts';
import type { JobSpec } from '../../shared/jobs.ts';
import { changeStatus } from '../../coordinator/jobs/lifecycle.ts';
import { createTestNode, leaseTo, type TestNode } from '../support/agent-fixture.ts';
import { dbSkipReason, startHarness, type Harness } from '../support/harness.ts';

const sha = (b: Buffer) => `sha256:${createHash('sha256').update(b).digest('hex')}`;
const spec = (extra: Record<string, unknown> = {}) => ({
  name: 'io',
  image: 'busybox:latest',
  command: ['true'],
  resources: { cpu: 1, memoryMb: 64 },
  ...extra,
});
const postJson = (body: unknown) => ({ method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
/** A plain tar holding one file of these bytes, as the agent packs /outputs. */
async function tarOf(name: string, bytes: Buffer): Promise<Buffer> {
  const pack = tarStream.pack();
  pack.entry({ name }, bytes);
  pack.finalize();
  const parts: Buffer[] = [];
  for await (const c of pack) parts.push(Buffer.from(c as Uint8Array));
  return Buffer.concat(parts);
}
const chunk = (seq: number, lines: string[], stream = 'stdout', epoch = 1) => ({ epoch, seq, stream, at: new Date().toISOString(), lines });

describe.skipIf(dbSkipReason)('job inputs, logs and outputs over HTTP', () => {
  let h: Harness;
  let client: { key: string; accountId: string };
  let other: { key: string };
  let node: TestNode;
  let otherNode: TestNode;

  beforeAll(async () => {
    h = await startHarness({ GANTRY_BLOB_MAX_BYTES: '300000', GANTRY_LOG_MAX_BYTES_PER_JOB: '2000', GANTRY_OUTPUTS_MAX_BYTES: '100000' });
    client = await h.newAccount('client');
    other = await h.newAccount('client');
    const provider = await h.newAccount('provider');
    node = await createTestNode(h, provider.accountId);
    otherNode = await createTestNode(h, provider.accountId);
  });
  afterAll(async () => h?.close());

  async function upload(key: string, body: Buffer) {
    const res = await h.fetch('/v1/blobs', { method: 'POST', key, body: new Uint8Array(body), headers: { 'content-type': 'application/octet-stream' } });
    return { status: res.status, body: (await res.json()) as { digest: string; size: number } };
  }

  async function submitRunning(extra: Record<string, unknown> = {}, on = node) {
    const job = await h.client(client.key).post<{ id: string }>('/v1/jobs', spec(extra));
    await leaseTo(h, job.id, on.nodeId);
    return job.id;
  }

  it('stores an upload under its digest, for its owner only', async () => {
    const bytes = randomBytes(280_000);
    const up = await upload(client.key, bytes);
    expect(up).toEqual({ status: 201, body: { digest: sha(bytes), size: bytes.length } });
    const back = await h.fetch(`/v1/blobs/${up.body.digest}`, { key: client.key });
    expect(back.status).toBe(200);
    expect(Buffer.from(await back.arrayBuffer()).equals(bytes)).toBe(true);
    expect((await h.fetch(`/v1/blobs/${up.body.digest}`, { key: other.key })).status).toBe(404);
    expect((await h.fetch(`/v1/blobs/${up.body.digest}`)).status).toBe(401);
    // curl --data-binary sends a form content type: a raw upload takes any.
    const form = await h.fetch('/v1/blobs', { method: 'POST', key: client.key, body: 'a=b', headers: { 'content-type': 'application/x-www-form-urlencoded' } });
    expect(form.status).toBe(201);
  });

  it('refuses an upload over the cap, declared or streamed, and stores nothing', async () => {
    const bytes = randomBytes(300_001);
    const declared = await upload(client.key, bytes);
    expect(declared.status).toBe(413);
    const streamed = await h.fetch('/v1/blobs', {
      method: 'POST',
      key: client.key,
      body: new ReadableStream({
        start(c) {
          c.enqueue(bytes.subarray(0, 200_000));
          c.enqueue(bytes.subarray(200_000));
          c.close();
        },
      }),
      duplex: 'half',
    } as RequestInit);
    expect(streamed.status).toBe(413);
    expect(await h.coordinator.deps.blobs.has(sha(bytes))).toBe(false);
  });

  it('serves an input only to the node holding a job that names it, at its epoch', async () => {
    const bytes = Buffer.from('input file\n');
    const { body: blob } = await upload(client.key, bytes);
    const { body: foreign } = await upload(other.key, Buffer.from('not yours'));
    // A spec naming bytes its owner never uploaded is refused at submit, field by field.
    const refused = await h.fetch('/v1/jobs', {
      key: client.key,
      ...postJson(spec({ inputs: [{ digest: blob.digest, path: 'a.txt' }, { digest: foreign.digest, path: 'b.txt' }] })),
    });
    expect(refused.status).toBe(400);
    expect((await refused.json()).errors).toEqual([{ path: 'inputs.1.digest', message: expect.stringMatching(/upload it with POST \/v1\/blobs/) }]);
    const jobId = await submitRunning({ inputs: [{ digest: blob.digest, path: 'a.txt' }] });
    // A spec from before that check, naming another tenant's digest: the node still cannot read it.
    const db = h.coordinator.deps.database.db;
    const [row] = await db.select().from(jobs).where(eq(jobs.id, jobId));
    await db
      .update(jobs)
      .set({ spec: { ...(row!.spec as JobSpec), inputs: [...(row!.spec as JobSpec).inputs!, { digest: foreign.digest, path: 'b.txt' }] } })
      .where(eq(jobs.id, jobId));
    const ok = await node.fetch(`/v1/agent/jobs/${jobId}/inputs/${blob.digest}?epoch=1`);
    expect(ok.status).toBe(200);
    expect(await ok.text()).toBe('input file\n');
    expect((await node.fetch(`/v1/agent/jobs/${jobId}/inputs/${blob.digest}?epoch=2`)).status).toBe(409);
    expect((await otherNode.fetch(`/v1/agent/jobs/${jobId}/inputs/${blob.digest}?epoch=1`)).status).toBe(404);
    // Named in the spec, but its owner never uploaded it: another tenant's bytes stay theirs.
    expect((await node.fetch(`/v1/agent/jobs/${jobId}/inputs/${foreign.digest}?epoch=1`)).status).toBe(404);
    const { body: unnamed } = await upload(client.key, Buffer.from('not named'));
    expect((await node.fetch(`/v1/agent/jobs/${jobId}/inputs/${unnamed.digest}?epoch=1`)).status).toBe(404);
    expect((await h.fetch(`/v1/agent/jobs/${jobId}/inputs/${blob.digest}?epoch=1`, { key: client.key })).status).toBe(401);
  });

  it('stores log chunks idempotently by seq and pages them in order', async () => {
    const jobId = await submitRunning();
    const send = (c: unknown) => node.fetch(`/v1/agent/jobs/${jobId}/logs`, postJson(c));
    expect(await (await send(chunk(1, ['err 1'], 'stderr'))).json()).toEqual({ seq: 1, stored: true });
    expect((await send(chunk(0, ['out 1', 'out 2']))).status).toBe(200);
    expect(await (await send(chunk(0, ['out 1', 'out 2']))).json()).toEqual({ seq: 0, stored: false });
    // Other lines under a taken seq: an agent that restarted numbering again; told where to go on.
    expect(await (await send(chunk(0, ['after a restart']))).json()).toEqual({ seq: 0, stored: false, nextSeq: 2 });
    expect((await send(chunk(2, ['out 3', '']))).status).toBe(200);
    expect((await send(chunk(3, ['x'], 'stdout', 2))).status).toBe(409);
    expect((await otherNode.fetch(`/v1/agent/jobs/${jobId}/logs`, postJson(chunk(3, ['x'])))).status).toBe(404);
    expect((await send({ ...chunk(3, ['two\nlines']) })).status).toBe(400);

    const api = h.client(client.key);
    type Page = { items: { seq: number; stream: string; text: string }[]; nextCursor: string | null; complete: boolean };
    const all = await api.get<Page>(`/v1/jobs/${jobId}/logs`);
    expect(all.items.map((i) => [i.seq, i.stream, i.text])).toEqual([
      [0, 'stdout', 'out 1\nout 2\n'],
      [1, 'stderr', 'err 1\n'],
      [2, 'stdout', 'out 3\n\n'],
    ]);
    expect(all).toMatchObject({ nextCursor: null, complete: false });
    const page = await api.get<Page>(`/v1/jobs/${jobId}/logs?limit=2`);
    expect(page.items.map((i) => i.seq)).toEqual([0]);
    expect(page.nextCursor).toBe('0');
    const rest = await api.get<Page>(`/v1/jobs/${jobId}/logs?cursor=${page.nextCursor}`);
    expect(rest.items.map((i) => i.seq)).toEqual([1, 2]);
    expect(rest.nextCursor).toBeNull();
    await expect(h.client(other.key).get(`/v1/jobs/${jobId}/logs`)).rejects.toMatchObject({ status: 404 });
  });

  it("caps a job's log, still taking the agent's line about what it dropped", async () => {
    const jobId = await submitRunning();
    const send = (c: unknown) => node.fetch(`/v1/agent/jobs/${jobId}/logs`, postJson(c));
    expect((await send(chunk(0, ['x'.repeat(1500)]))).status).toBe(200);
    expect((await send(chunk(1, ['y'.repeat(600)]))).status).toBe(413);
    expect((await send(chunk(1, ['[gantry] log cap reached: 600 bytes dropped'], 'system'))).status).toBe(200);
  });

  it('follows a log as server-sent events until the job ends', async () => {
    const jobId = await submitRunning();
    const send = (c: unknown) => node.fetch(`/v1/agent/jobs/${jobId}/logs`, postJson(c));
    await send(chunk(0, ['first']));
    const res = await h.fetch(`/v1/jobs/${jobId}/logs?follow=1`, { key: client.key });
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toMatch(/^text\/event-stream/);
    const reader = res.body!.pipeThrough(new TextDecoderStream()).getReader();
    let text = '';
    const until = async (pattern: RegExp) => {
      const deadline = Date.now() + 10_000;
      while (!pattern.test(text)) {
        if (Date.now() > deadline) throw new Error(`no ${pattern} in ${text}`);
        const { value, done } = await reader.read();
        if (done) break;
        text += value;
      }
    };
    await until(/"first\\n"/);
    await send(chunk(1, ['second'], 'stderr'));
    await until(/"second\\n"/);
    const db = h.coordinator.deps.database.db;
    await db.transaction((tx) => changeStatus(tx, jobId, ['running'], 'failed', 'test', { exitCode: 3, finishedAt: new Date() }));
    await until(/event: end/);
    await until(/\n\n$/);
    const events = text
      .split('\n\n')
      .filter(Boolean)
      .map((e) => Object.fromEntries(e.split('\n').map((l) => [l.slice(0, l.indexOf(':')), l.slice(l.indexOf(':') + 2)])));
    expect(events.map((e) => e.event)).toEqual(['log', 'log', 'end']);
    expect(events.map((e) => e.id)).toEqual(['0', '1', undefined]);
    expect(JSON.parse(events[2]!.data!)).toEqual({ reason: 'ended', status: 'failed', exitCode: 3, error: null });
    const { done } = await reader.read();
    expect(done).toBe(true);
    // Resuming after the last seen id sends only what came after it.
    const again = await h.fetch(`/v1/jobs/${jobId}/logs?follow=1`, { key: client.key, headers: { 'last-event-id': '0' } });
    const rest = await again.text();
    expect(rest).not.toContain('first');
    expect(rest).toContain('"second\\n"');
    expect((await h.fetch(`/v1/jobs/${jobId}/logs?follow=1`, { key: other.key })).status).toBe(404);
  });

  it('stores outputs and result for the job owner, fenced by the lease', async () => {
    const jobId = await submitRunning();
    const tar = await tarOf('model.bin', randomBytes(50_000));
    const up = await node.fetch(`/v1/agent/jobs/${jobId}/outputs?epoch=1`, { method: 'POST', body: new Uint8Array(tar), headers: { 'content-type': 'application/x-tar' } });
    expect(up.status).toBe(201);
    expect(await up.json()).toEqual({ digest: sha(tar), size: tar.length });
    expect((await node.fetch(`/v1/agent/jobs/${jobId}/outputs?epoch=2`, { method: 'POST', body: new Uint8Array(tar) })).status).toBe(409);
    expect((await node.fetch(`/v1/agent/jobs/${jobId}/outputs?epoch=1`, { method: 'POST', body: new Uint8Array(randomBytes(100_001)) })).status).toBe(413);
    expect((await node.fetch(`/v1/agent/jobs/${jobId}/result`, postJson({ epoch: 1, result: { loss: 0.25, ok: true } }))).status).toBe(204);
    // Only a plain tar: a gzipped one (4 MB of zeros in 4 KB here) and bytes that are no tar are
    // refused, and the outputs stored before stay.
    const bomb = gzipSync(await tarOf('zeros.bin', Buffer.alloc(4 << 20)));
    expect(bomb.length).toBeLessThan(100_000);
    for (const body of [bomb, randomBytes(50_000), Buffer.from('tiny')]) {
      const refused = await node.fetch(`/v1/agent/jobs/${jobId}/outputs?epoch=1`, { method: 'POST', body: new Uint8Array(body), headers: { 'content-type': 'application/x-tar' } });
      expect(refused.status).toBe(415);
      expect((await refused.json()).detail).toMatch(/plain, uncompressed tar/);
    }

    const down = await h.fetch(`/v1/jobs/${jobId}/outputs`, { key: client.key });
    expect(down.status).toBe(200);
    expect(down.headers.get('content-type')).toBe('application/x-tar');
    expect(Buffer.from(await down.arrayBuffer()).equals(tar)).toBe(true);
    expect((await h.fetch(`/v1/jobs/${jobId}/outputs`, { key: other.key })).status).toBe(404);
    const job = await h.client(client.key).get<{ result: unknown }>(`/v1/jobs/${jobId}`);
    expect(job.result).toEqual({ loss: 0.25, ok: true });
    const none = await submitRunning();
    expect((await h.fetch(`/v1/jobs/${none}/outputs`, { key: client.key })).status).toBe(404);
  });
});
