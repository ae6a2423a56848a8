// Faults a coordinator must ride out, with real processes: two coordinators on a PostgreSQL server
// of the test's own (stopped and restarted under them) and agents with the test executor, under a
// small submit load; and a PGlite coordinator as PID 1 killed with -9. After every fault the
// database invariants (test/support/invariants.ts) are checked.
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { and, eq, gte, min, sql } from 'drizzle-orm';
import { jobEvents } from '../../coordinator/db/schema/index.ts';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openDatabase, type Database } from '../../coordinator/db/open.ts';
import { ApiClient } from '../../shared/client.ts';
import type { EnrollmentToken } from '../../shared/nodes.ts';
import { spawnAgent, type AgentProcess } from '../support/agent-process.ts';
import { dataDirLockHeld, spawnCoordinator, type CoordinatorProcess } from '../support/coordinator-process.ts';
import { createFakeNvidiaSmi, type FakeNvidiaSmi } from '../support/fake-nvidia-smi.ts';
import { InvariantChecker } from '../support/invariants.ts';
import { ownPostgresSkipReason, startPostgresServer, type PostgresServer } from '../support/postgres-server.ts';
import { until } from '../support/until.ts';

const pgSkip = ownPostgresSkipReason();

const terminal = ['succeeded', 'failed', 'cancelled'];
/** Why the test executor's run ended when it was stopped rather than run to its end. */
const stopped = new Set(['lease-expired', 'lease-lost', 'shutdown', 'cancelled']);

/** A submit every `everyMs` to each coordinator in turn, as a balancer would spread them. */
class SubmitLoad {
  readonly acknowledged: string[] = [];
  /** 503 answers: what a client sees while the database is away. */
  readonly unavailable: { contentType: string | null; retryAfter: string | null; code: string | null }[] = [];
  /** Anything else that was not a 201: none is expected. */
  readonly failures: string[] = [];
  private running: Promise<void> | null = null;
  private stopping = false;

  constructor(
    private urls: string[],
    private key: string,
    private spec: Record<string, unknown>,
  ) {}

  start(everyMs: number) {
    this.stopping = false;
    this.running = (async () => {
      for (let i = 0; !this.stopping; i++) {
        const next = Date.now() + everyMs;
        await this.submit(this.urls[i % this.urls.length]!);
        await new Promise((r) => setTimeout(r, Math.max(0, next - Date.now())));
      }
    })();
  }

  async stop() {
    this.stopping = true;
    await this.running;
  }

  private async submit(url: string) {
    try {
      const res = await fetch(`${url}/v1/jobs`, {
        method: 'POST',
        headers: { authorization: `Bearer ${this.key}`, 'content-type': 'application/json' },
        body: JSON.stringify(this.spec),
        signal: AbortSignal.timeout(20_000),
      });
      const text = await res.text();
      if (res.status === 201) this.acknowledged.push((JSON.parse(text) as { id: string }).id);
      else if (res.status === 503) {
        this.unavailable.push({ contentType: res.headers.get('content-type'), retryAfter: res.headers.get('retry-after'), code: (JSON.parse(text) as { code?: string }).code ?? null });
      } else this.failures.push(`${res.status} ${text.slice(0, 300)}`);
    } catch (err) {
      this.failures.push(`${url}: ${String((err as Error)?.message ?? err)}`);
    }
  }
}

describe.skipIf(pgSkip)('PostgreSQL outages under load: two coordinators ride them out', () => {
  let server: PostgresServer;
  let database: Database;
  let work: string;
  const coordinators: CoordinatorProcess[] = [];
  const urls: string[] = [];
  const agents: AgentProcess[] = [];
  const fakes: FakeNvidiaSmi[] = [];
  const invariants = new InvariantChecker();
  let load: SubmitLoad;
  let runsFile: string;

  const rows = <T>(query: ReturnType<typeof sql>) => database.rows<T>(query);
  const readiness = (url: string) => fetch(`${url}/readyz`, { signal: AbortSignal.timeout(5000) }).then((r) => r.status, (e: Error) => e.name);
  /** What the coordinators that exited said on stderr (none should have). */
  const exits = () =>
    coordinators
      .filter((c) => c.child.exitCode !== null || c.child.signalCode !== null)
      .map((c) => `\ncoordinator exited (${c.child.exitCode ?? c.child.signalCode}): ${c.stderr.slice(-30).join('\n')}`)
      .join('');
  /** Waits until every coordinator's /readyz answers `status`; the failure names what they last said. */
  const readyzSays = async (status: number, what: string) => {
    let last: (number | string)[] = [];
    await until(what, async () => (last = await Promise.all(urls.map(readiness))).every((s) => s === status), 15_000).catch((err: Error) => {
      throw new Error(`${err.message}: /readyz said ${last.join(', ')}${exits()}`);
    });
  };
  const logLines = (c: CoordinatorProcess, msg: string) => c.stdout.filter((l) => l.includes(`"msg":"${msg}"`)).length;
  /** The first placement committed at or after `since`, in ms after it. */
  const firstPlacementAfter = (since: number) =>
    until(
      'a placement after the database came back',
      async () => {
        // The test's own pooled connections died with the server too: a first query may fail.
        const [row] = await database.db
          .select({ at: min(jobEvents.at) })
          .from(jobEvents)
          .where(and(eq(jobEvents.toStatus, 'leased'), gte(jobEvents.at, new Date(since))))
          .catch(() => []);
        return row?.at ? row.at.getTime() - since : null;
      },
      30_000,
    );

  beforeAll(async () => {
    work = await mkdtemp(path.join(tmpdir(), 'gantry-faults-'));
    runsFile = path.join(work, 'runs.jsonl');
    server = await startPostgresServer();
    const env = {
      PORT: '0',
      HOST: '127.0.0.1',
      DATABASE_URL: server.url,
      GANTRY_NAME: 'gantry-faults',
      GANTRY_LEASE_TTL_SECONDS: '15',
      // Shorter than the 30 s outage: without the sweepers' grace every node would go offline.
      GANTRY_NODE_TTL_SECONDS: '10',
      GANTRY_LOG_REQUESTS: 'false',
      GANTRY_SCHEDULER_TICK_MS: '1000',
    };
    const first = spawnCoordinator(env);
    coordinators.push(first);
    const { url, adminKey } = await first.ready;
    const second = spawnCoordinator(env);
    coordinators.push(second);
    urls.push(url, (await second.ready).url);
    database = await openDatabase({ databaseUrl: server.url, poolSize: 4 });

    const admin = new ApiClient({ baseUrl: url, token: adminKey! });
    const account = async (kind: 'client' | 'provider') => {
      const acct = await admin.post<{ id: string }>('/v1/accounts', { name: `faults-${kind}`, kind });
      return (await admin.post<{ key: string }>(`/v1/accounts/${acct.id}/keys`, { scopes: [kind] })).key;
    };
    const clientKey = await account('client');
    const provider = new ApiClient({ baseUrl: url, token: await account('provider') });
    // One agent on each coordinator; each machine has GPUs of its own.
    for (const [i, xml] of ['rtx-a5000-x2-v13.xml', 'tesla-k80-x4-azure-v10.xml'].entries()) {
      const fake = await createFakeNvidiaSmi({ xml });
      fakes.push(fake);
      const { token } = await provider.post<EnrollmentToken>('/v1/enrollment-tokens', {});
      const agent = spawnAgent(
        ['join', '--coordinator', urls[i]!, '--token', token, '--state-dir', path.join(work, `rig-${i}`), '--name', `rig-${i}`, '--run', '--test-executor', '--heartbeat-seconds', '0.5'],
        { PATH: `${fake.path}${path.delimiter}${process.env.PATH}`, GANTRY_AGENT_STATE_DIR: '' },
      );
      agents.push(agent);
      await agent.waitForLine(/connected to the coordinator/, 60_000);
    }
    load = new SubmitLoad(urls, clientKey, {
      name: 'fault-load',
      image: 'busybox:latest',
      command: ['true'],
      env: { GANTRY_TEST_SLEEP_MS: '100', GANTRY_TEST_RECORD: runsFile },
      resources: { cpu: 0.25, memoryMb: 64, gpus: 0 },
      maxAttempts: 5,
    });
    load.start(250);
    await until('jobs to flow', async () => (await rows<{ n: number }>(sql`select count(*)::int as n from jobs where status = 'succeeded'`))[0]!.n >= 5);
  }, 180_000);

  afterAll(async () => {
    await load?.stop();
    for (const a of agents) await a.kill();
    for (const c of coordinators) await c.stop(5000);
    await database?.close().catch(() => {});
    server?.destroy();
    for (const f of fakes) await f.cleanup();
    if (work) await rm(work, { recursive: true, force: true });
  });

  it('a restart: nothing exits, and placements resume within 5 s of the database taking connections again', async () => {
    server.restart();
    const back = Date.now();
    expect(await firstPlacementAfter(back)).toBeLessThan(5000);
    expect(exits()).toBe('');
    await invariants.check(database.db);
  }, 60_000);

  it('a 30 s stop: readyz and the API answer 503 (Retry-After), the scheduler stands down and takes over again, no node goes offline', async () => {
    const lostBefore = coordinators.map((c) => logLines(c, 'lost the scheduler lock'));
    const electedBefore = coordinators.map((c) => logLines(c, 'this coordinator is the active scheduler'));
    const refusedBefore = load.unavailable.length;
    const stoppedAt = Date.now();
    server.stop();
    await readyzSays(503, 'both coordinators to say they are not ready');
    await until('a submit to be refused with 503', () => load.unavailable.length > refusedBefore, 10_000);
    // The active scheduler's session died with the database: it gave up the lock.
    await until('the scheduler to stand down', () => coordinators.some((c, i) => logLines(c, 'lost the scheduler lock') > lostBefore[i]!), 10_000).catch((err: Error) => {
      throw new Error(`${err.message}; the coordinators said:\n${coordinators.map((c) => c.stdout.slice(-12).join('\n')).join('\n---\n')}${exits()}`);
    });
    // The outage itself lasts 30 s (what is checked meanwhile is above).
    await new Promise((r) => setTimeout(r, Math.max(0, stoppedAt + 30_000 - Date.now())));
    server.start();
    const back = Date.now();
    expect(await firstPlacementAfter(back)).toBeLessThan(5000);
    await readyzSays(200, 'both coordinators to be ready again');
    expect(coordinators.some((c, i) => logLines(c, 'this coordinator is the active scheduler') > electedBefore[i]!)).toBe(true);

    const refusals = load.unavailable.slice(refusedBefore);
    expect(refusals.length).toBeGreaterThan(0);
    for (const r of refusals) expect(r).toEqual({ contentType: 'application/problem+json', retryAfter: '5', code: 'unavailable' });
    expect(load.failures).toEqual([]);
    for (const c of coordinators) expect(c.child.exitCode ?? c.child.signalCode).toBeNull();
    await invariants.check(database.db);
  }, 120_000);

  it('after both faults: every job ends, none ran twice, no node went offline, the invariants hold', async () => {
    await load.stop();
    const ids = load.acknowledged;
    await until(
      'every acknowledged job to end',
      async () => {
        const [row] = await rows<{ n: number }>(sql`select count(*)::int as n from jobs where status not in ('succeeded', 'failed', 'cancelled')`);
        return row!.n === 0;
      },
      90_000,
    );
    await invariants.expectStored(database.db, ids);
    await invariants.check(database.db);
    const ended = await rows<{ status: string; n: number }>(sql`select status, count(*)::int as n from jobs group by status`);
    expect(ended.every((r) => terminal.includes(r.status))).toBe(true);
    expect(ended.find((r) => r.status !== 'succeeded')).toBeUndefined();

    // The runs the agents made: each job ran to its end once (a result the agent could not deliver
    // during the outage was kept and delivered after it, not run again), never two of one job at
    // once, and none after the job ended.
    const runs = (await readFile(runsFile, 'utf8'))
      .split('\n')
      .filter(Boolean)
      .map((l) => JSON.parse(l) as { event: 'start' | 'end'; jobId: string; nodeId: string | null; at: number; reason?: string });
    const byJob = new Map<string, typeof runs>();
    for (const r of runs) byJob.set(r.jobId, [...(byJob.get(r.jobId) ?? []), r]);
    const endedAt = new Map(
      (await rows<{ id: string; at: Date | string }>(sql`select id, finished_at as at from jobs`)).map((r) => [r.id, new Date(r.at).getTime()]),
    );
    for (const [jobId, events] of byJob) {
      const completed = events.filter((e) => e.event === 'end' && !stopped.has(e.reason ?? ''));
      expect(completed.length, `runs of ${jobId} to their end: ${JSON.stringify(events)}`).toBe(1);
      for (const e of events) expect(e.at, `a run of ${jobId} after it ended`).toBeLessThanOrEqual(endedAt.get(jobId)!);
      let open = 0;
      for (const e of [...events].sort((a, b) => a.at - b.at)) {
        open += e.event === 'start' ? 1 : -1;
        expect(open, `${jobId} ran twice at once`).toBeLessThanOrEqual(1);
      }
    }
    expect(byJob.size).toBe(ids.length);

    for (const c of coordinators) {
      expect(c.child.exitCode ?? c.child.signalCode, 'a coordinator exited').toBeNull();
      expect(c.stdout.filter((l) => l.includes('"msg":"node offline"'))).toEqual([]);
    }
  }, 150_000);
});

describe('a PGlite coordinator as PID 1 (in a pid namespace of its own)', () => {
  let work: string;
  const running: CoordinatorProcess[] = [];
  beforeAll(async () => {
    work = await mkdtemp(path.join(tmpdir(), 'gantry-pid1-'));
  });
  afterAll(async () => {
    for (const c of running) await c.stop(5000);
    // Stopping unshare only signals the coordinator in it: the data dir is removed once it has let go of it.
    const dataDir = work && path.join(work, 'data');
    if (dataDir && existsSync(path.join(dataDir, 'gantry.lock'))) await until('the coordinators to let go of the data dir', () => !dataDirLockHeld(dataDir), 15_000);
    if (work) await rm(work, { recursive: true, force: true, maxRetries: 5 });
  });

  const start = (dataDir: string) => {
    const c = spawnCoordinator(
      { PORT: '0', HOST: '127.0.0.1', GANTRY_DATA_DIR: dataDir, GANTRY_LOG_REQUESTS: 'false' },
      [],
      [],
      // --kill-child: stopping unshare (the process the test holds) stops the coordinator in it.
      ['unshare', '--pid', '--fork', '--mount-proc', '--kill-child=SIGTERM'],
    );
    running.push(c);
    return c;
  };
  /** The coordinator's node process (unshare's child, PID 1 inside), as this namespace sees it. */
  const coordinatorPid = (c: CoordinatorProcess) => Number(execFileSync('pgrep', ['-P', String(c.child.pid)], { encoding: 'utf8' }).trim().split('\n')[0]);

  it('killed with -9 starts again on its data dir, and a second live one is still refused', async () => {
    const dataDir = path.join(work, 'data');
    const first = start(dataDir);
    const { url } = await first.ready;
    expect((await fetch(`${url}/readyz`)).status).toBe(200);
    // The lock file names pid 1: a pid check alone would think that holder (this namespace's init) alive.
    expect((await readFile(path.join(dataDir, 'gantry.lock'), 'utf8')).split(' ')[0]).toBe('1');
    process.kill(coordinatorPid(first), 'SIGKILL');
    await first.exited;
    await until('the dead holder to let go of the lock', () => !dataDirLockHeld(dataDir), 10_000);

    const again = start(dataDir);
    const ready = await again.ready;
    expect(ready.adminKey).toBeNull();
    expect((await fetch(`${ready.url}/readyz`)).status).toBe(200);

    const second = start(dataDir);
    expect((await second.exited).code).not.toBe(0);
    expect(second.stderr.filter((l) => l.trim())).toEqual([expect.stringMatching(/^gantry-coordinator: the data dir .* is in use by another coordinator \(pid 1\)/)]);
    expect((await fetch(`${ready.url}/healthz`)).status).toBe(200);
  }, 120_000);
});
