// Text that PostgreSQL cannot store (NUL, a lone surrogate) and text a node wrote: a client's is
// refused with the field's path, never a 500; a node's is cleaned and kept, never refused (the
// agent drops a report answered 4xx, and the job would run again).
import { eq } from 'drizzle-orm';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { accounts, nodes } from '../../coordinator/db/schema/index.ts';
import { describeFailure } from '../../coordinator/log.ts';
import { newId } from '../../shared/ids.ts';
import type { Job, JobEvent } from '../../shared/jobs.ts';
import type { LogPage } from '../../shared/logs.ts';
import { createTestNode, leaseTo, type TestNode } from '../support/agent-fixture.ts';
import { jobSpec } from '../support/factories.ts';
import { dbSkipReason, startHarness, type Harness } from '../support/harness.ts';
import { expectProblem } from '../support/problem.ts';

const post = (body: unknown) => ({ method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
const nul = '\u0000';
const loneHigh = '\ud800';
const loneLow = '\udfff';
/** What a hostile node puts in its text: a terminal title, a screen clear, a bell, NUL, lone surrogates. */
const hostile = `boom\u001b]0;owned\u0007\u001b[2J\u001b[31mred\u001b[0m${nul}${loneHigh}x${loneLow}\u009b31m\ttab\rcr\nnl`;

describe.skipIf(dbSkipReason)('untrusted text', () => {
  let h: Harness;
  let client: Awaited<ReturnType<Harness['newAccount']>>;
  let node: TestNode;

  beforeAll(async () => {
    h = await startHarness();
    client = await h.newAccount('client');
    node = await createTestNode(h, (await h.newAccount('provider')).accountId);
  });
  afterAll(async () => h?.close());

  it('refuses a NUL or an unpaired surrogate in any string a client sends with 400 and its path', async () => {
    const cases: [string, string, unknown, string, string?][] = [
      ['POST', '/v1/jobs', jobSpec({ env: { TOKEN: `s3cr${nul}et` } }), 'env.TOKEN'],
      ['POST', '/v1/jobs', jobSpec({ name: `job${loneHigh}` }), 'name'],
      ['POST', '/v1/jobs', jobSpec({ command: ['echo', `a${loneLow}b`] }), 'command.1'],
      ['POST', '/v1/jobs', jobSpec({ labels: { team: `x${nul}` } }), 'labels.team'],
      ['POST', '/v1/jobs/dry-run', jobSpec({ env: { K: `${loneHigh}` } }), 'env.K'],
      ['POST', '/v1/accounts', { name: `acct${nul}`, kind: 'client' }, 'name', h.coordinator.adminKey!],
    ];
    for (const [method, path, body, field, key] of cases) {
      const res = await h.fetch(path, { ...post(body), method, key: key ?? client.key });
      await expectProblem(res, { status: 400, code: 'validation', title: 'Invalid request', errors: [{ path: field, message: /NUL|surrogate/ }] });
    }
    // A query string is a string a client sends too.
    const res = await h.fetch(`/v1/jobs?cursor=${encodeURIComponent(`a${nul}`)}`, { key: client.key });
    expect(res.status).toBe(400);
  });

  it("cleans, and keeps, a node's finish error, progress notes and log lines", async () => {
    const job = await h.client(client.key).post<Job>('/v1/jobs', jobSpec());
    await leaseTo(h, job.id, node.nodeId, 'running');
    // What the scheduler would have taken from the node, so that the finish can give it back.
    await h.coordinator.deps.database.db.update(nodes).set({ allocatedCpuMillis: 1000, allocatedMemoryMb: 256 }).where(eq(nodes.id, node.nodeId));
    const at = new Date().toISOString();
    const line = hostile.replace(/\n/g, ' ');
    expect((await node.fetch(`/v1/agent/jobs/${job.id}/logs`, post({ epoch: 1, seq: 0, stream: 'stdout', at, lines: [line, `${nul}`] }))).status).toBe(200);
    expect((await node.fetch(`/v1/agent/jobs/${job.id}/progress`, post({ epoch: 1, message: hostile }))).status).toBe(204);
    const finished = await node.fetch(`/v1/agent/jobs/${job.id}/finish`, post({ epoch: 1, reason: 'error', exitCode: null, error: hostile }));
    expect(finished.status, await finished.clone().text()).toBe(200);

    const ended = await h.client(client.key).get<Job>(`/v1/jobs/${job.id}`);
    expect(ended.status).toBe('failed');
    // One line, every control character and lone surrogate replaced; the printable rest kept.
    expect(ended.error).toBe('boom\ufffd]0;owned\ufffd\ufffd[2J\ufffd[31mred\ufffd[0m\ufffd\ufffdx\ufffd\ufffd31m tab cr nl');
    const { items: events } = await h.client(client.key).get<{ items: JobEvent[] }>(`/v1/jobs/${job.id}/events`);
    expect(events.map((e) => e.reason)).toContain(ended.error);

    // A log keeps the job's colours, tabs and carriage returns (the CLI decides what a terminal
    // sees); NUL, lone surrogates and other controls are replaced.
    const page = await h.client(client.key).get<LogPage>(`/v1/jobs/${job.id}/logs`);
    expect(page.items.map((b) => b.text).join('')).toBe(
      'boom\u001b]0;owned\ufffd\u001b[2J\u001b[31mred\u001b[0m\ufffd\ufffdx\ufffd\ufffd31m\ttab\rcr nl\n\ufffd\n',
    );
  });

  it('logs a failed query without its parameters or the values the database quotes', async () => {
    const marker = `secret${Date.now()}`;
    const err = await h.coordinator.deps.database.db
      .insert(accounts)
      .values({ id: newId('account'), name: `${marker}\u0000`, kind: 'client' })
      .catch((e: unknown) => e as Error);
    // The error as the driver gives it quotes the value; the line a log may hold does not.
    expect(`${(err as Error).stack}`).toContain(marker);
    const line = describeFailure(err);
    expect(line).not.toContain(marker);
    expect(line).toMatch(/^\w+: a query failed: \S/);
    expect(line).toMatch(/\n\s+at /);
  });
});
