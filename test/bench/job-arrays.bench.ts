// Job arrays. Prints `name: value unit` lines.
//   1. Submit of one 10,000-task array over HTTP to a coordinator process (as `npm start` runs it),
//      p50 of 5 runs, on PGlite and PostgreSQL; beside it, the same 10,000 jobs submitted one by one
//      (50 clients), which is what a client had to do before.
//   2. Placements per second while a 10,000-task array drains (PostgreSQL, the real scheduler loop,
//      simulated agents ending each task 1-5 s after its lease), against 10,000 plain jobs of the
//      same shape; and with maxParallel 300, how long 1,000 plain jobs submitted behind it wait.
//
//   npx tsx test/bench/job-arrays.bench.ts         (BENCH_DB=pglite,postgres BENCH_NODES=200 BENCH_TASKS=10000 BENCH_SINGLE=2000)
import { randomBytes } from 'node:crypto';
import { Agent, request } from 'node:http';
import { spawn } from 'node:child_process';
import { mkdtempSync, openSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { sql } from 'drizzle-orm';
import postgres from 'postgres';
import type { Clock } from '../../coordinator/clock.ts';
import { migrate } from '../../coordinator/db/migrate.ts';
import { openDatabase, toNumber, type Database } from '../../coordinator/db/open.ts';
import { accounts, jobEvents, jobs, nodes } from '../../coordinator/db/schema/index.ts';
import { submitArray } from '../../coordinator/jobs/arrays.ts';
import { submitJob } from '../../coordinator/jobs/lifecycle.ts';
import { executeRows } from '../../coordinator/jobs/transitions.ts';
import { silentLogger } from '../../coordinator/log.ts';
import { SchedulerLoop } from '../../coordinator/scheduler/loop.ts';
import { Signals, topics } from '../../coordinator/signals.ts';
import { newId } from '../../shared/ids.ts';
import { JobSpec } from '../../shared/jobs.ts';
import { cleanEnv, repoRoot } from '../support/coordinator-process.ts';

const dbs = (process.env.BENCH_DB ?? 'pglite,postgres').split(',');
const taskCount = Number(process.env.BENCH_TASKS ?? 10_000);
const nodeCount = Number(process.env.BENCH_NODES ?? 200);
const maxSeconds = Number(process.env.BENCH_SECONDS ?? 60);
const adminUrl = process.env.GANTRY_TEST_POSTGRES_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres';
const clock: Clock = { now: () => new Date() };
const out = (name: string, value: number | string, unit: string) => console.log(`${name}: ${value} ${unit}`);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

const base = { name: 'sweep', image: 'busybox:latest', command: ['sh', '-c', 'echo $GANTRY_TASK_INDEX'], resources: { cpu: 1, memoryMb: 512, gpus: 0 } };

async function scratchDatabase() {
  const admin = postgres(adminUrl, { max: 1, onnotice: () => {}, connect_timeout: 3 });
  const name = `gantry_bench_${randomBytes(5).toString('hex')}`;
  await admin.unsafe(`create database ${name}`);
  return {
    url: adminUrl.replace(/\/[^/]*$/, `/${name}`),
    async drop() {
      await admin.unsafe(`drop database if exists ${name} with (force)`);
      await admin.end({ timeout: 5 });
    },
  };
}

// ---------------------------------------------------------------------------------------------
// 1. Submit over HTTP

function post(agent: Agent, url: URL, path: string, key: string, payload: string, headers: Record<string, string> = {}): Promise<{ status: number; text: string }> {
  return new Promise((resolve, reject) => {
    const req = request(
      { agent, host: url.hostname, port: url.port, path, method: 'POST', headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json', 'content-length': Buffer.byteLength(payload), ...headers } },
      (res) => {
        let text = '';
        res.setEncoding('utf8');
        res.on('data', (d) => (text += d));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, text }));
      },
    );
    req.on('error', reject);
    req.end(payload);
  });
}

async function startCoordinatorProcess(env: Record<string, string>) {
  const dir = mkdtempSync(join(tmpdir(), 'gantry-bench-'));
  const logFile = join(dir, 'stdout.log');
  const merged: Record<string, string> = { ...cleanEnv(), GANTRY_LOG_REQUESTS: 'false' };
  for (const [k, v] of Object.entries(env)) if (v !== '') merged[k] = v;
  const child = spawn(process.execPath, ['--import', 'tsx', 'coordinator/main.ts'], { cwd: repoRoot, env: merged, stdio: ['ignore', openSync(logFile, 'w'), 'inherit'] });
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const deadline = Date.now() + 120_000;
  for (;;) {
    const text = readFileSync(logFile, 'utf8');
    const url = text.match(/^Gantry coordinator listening on (\S+)/m)?.[1];
    if (url) {
      return {
        url: new URL(url),
        adminKey: text.match(/^Admin API key: (\S+)$/m)![1]!,
        async stop() {
          if (child.exitCode === null) child.kill('SIGTERM');
          await exited;
          rmSync(dir, { recursive: true, force: true });
        },
      };
    }
    if (child.exitCode !== null || Date.now() > deadline) throw new Error(`the coordinator did not start:\n${text}`);
    await sleep(50);
  }
}

async function submitBench(db: string) {
  const scratch = db === 'postgres' ? await scratchDatabase() : null;
  // No node: what is measured is the submit, not placements competing with it.
  const c = await startCoordinatorProcess({ PORT: '0', HOST: '127.0.0.1', DATABASE_URL: scratch?.url ?? '', GANTRY_DATA_DIR: 'memory://bench' });
  const agent = new Agent({ keepAlive: true, maxSockets: 50 });
  try {
    const account = JSON.parse((await post(agent, c.url, '/v1/accounts', c.adminKey, JSON.stringify({ name: 'bench', kind: 'client' }))).text) as { id: string };
    const { key } = JSON.parse((await post(agent, c.url, `/v1/accounts/${account.id}/keys`, c.adminKey, JSON.stringify({ scopes: ['client'] }))).text) as { key: string };
    const array = JSON.stringify({ ...base, tasks: { count: taskCount } });
    await post(agent, c.url, '/v1/jobs', key, JSON.stringify({ ...base, tasks: { count: 10 } }));
    const times: number[] = [];
    const cancels: number[] = [];
    for (let run = 0; run < 5; run++) {
      const t = performance.now();
      const res = await post(agent, c.url, '/v1/jobs', key, array);
      times.push(performance.now() - t);
      if (res.status !== 201) throw new Error(`array submit answered ${res.status}: ${res.text.slice(0, 300)}`);
      // Cancelled again, so that every run (and the single submits after) starts from an empty queue.
      const t2 = performance.now();
      const cancelled = await post(agent, c.url, `/v1/jobs/${(JSON.parse(res.text) as { id: string }).id}/cancel`, key, '{}');
      cancels.push(performance.now() - t2);
      if (cancelled.status !== 200) throw new Error(`array cancel answered ${cancelled.status}: ${cancelled.text.slice(0, 300)}`);
    }
    out(`arrays_submit_${taskCount}_tasks_${db}_p50`, median(times).toFixed(0), 'ms');
    out(`arrays_submit_${taskCount}_tasks_${db}_max`, Math.max(...times).toFixed(0), 'ms');
    out(`arrays_cancel_${taskCount}_queued_tasks_${db}_p50`, median(cancels).toFixed(0), 'ms');
    // Before arrays: the same jobs one request each, 50 at a time (BENCH_SINGLE of them, default all).
    const one = JSON.stringify(base);
    const singles = Number(process.env.BENCH_SINGLE ?? taskCount);
    let next = 0;
    const t = performance.now();
    await Promise.all(
      Array.from({ length: 50 }, async () => {
        while (next++ < singles) {
          // A kept-alive socket the server closed as this one was sent: sent again (a new job; the count is what matters).
          const res = await post(agent, c.url, '/v1/jobs', key, one).catch(() => post(agent, c.url, '/v1/jobs', key, one));
          if (res.status !== 201) throw new Error(`submit answered ${res.status}`);
        }
      }),
    );
    const secs = (performance.now() - t) / 1000;
    out(`arrays_submit_single_jobs_${db}_per_s`, (singles / secs).toFixed(0), 'jobs/s');
    out(`arrays_submit_${taskCount}_single_jobs_${db}`, ((taskCount / singles) * secs * 1000).toFixed(0), `ms${singles < taskCount ? ` (from ${singles})` : ''}`);
  } finally {
    agent.destroy();
    await c.stop();
    await scratch?.drop();
  }
}

// ---------------------------------------------------------------------------------------------
// 2. Draining, on PostgreSQL

/**
 * Simulated agents: every 100 ms the jobs whose run (1-5 s from their lease, by id) is over end
 * succeeded with what finishJob writes (epoch + 1, event, allocation freed, the array's lease count
 * lowered), set-based in one transaction, so that they do not eat the cores being measured.
 */
function startAgents(database: Database, signals: Signals) {
  let stop = false;
  const loop = (async () => {
    while (!stop) {
      const nodeIds = await database.db
        .transaction(async (tx) => {
          const due = await executeRows<{ id: string; node_id: string }>(
            tx,
            sql`select id, node_id from ${jobs} where status in ('leased', 'running')
                  and leased_at < now() - ((abs(hashtext(id)) % 4000) + 1000) * interval '1 millisecond' order by leased_at limit 5000`,
          );
          if (!due.length) return [];
          const ids = [...new Set(due.map((d) => d.node_id))].sort();
          await tx.execute(sql`select id from ${nodes} where id in (${sql.join(ids.map((id) => sql`${id}`), sql`, `)}) order by id for update`);
          await tx.execute(sql`
            with done as (
              update ${jobs} j set status = 'succeeded', lease_epoch = j.lease_epoch + 1, finished_at = now(), exit_code = 0, updated_at = now()
              where j.id in (${sql.join(due.map((d) => sql`${d.id}`), sql`, `)}) and j.status in ('leased', 'running')
              returning j.id, j.node_id, j.parent_id, j.cpu_millis, j.memory_mb
            ), ev as (
              insert into ${jobEvents} (job_id, from_status, to_status, reason, created_at) select id, 'leased', 'succeeded', 'bench agent: exited 0', now() from done
            ), n as (
              update ${nodes} set allocated_cpu_millis = allocated_cpu_millis - d.cpu, allocated_memory_mb = allocated_memory_mb - d.mem
              from (select node_id, sum(cpu_millis)::int as cpu, sum(memory_mb)::int as mem from done group by node_id) d where ${nodes}.id = d.node_id
            ), a as (
              update ${jobs} p set tasks_active = p.tasks_active - d.n
              from (select parent_id, count(*)::int as n from done where parent_id is not null group by parent_id) d where p.id = d.parent_id
            )
            select 1`);
          return ids;
        })
        .catch((err) => {
          console.error(`# agents: ${String(err?.cause?.message ?? err?.message ?? err)}`);
          return [] as string[];
        });
      for (const id of nodeIds) signals.emit(topics.nodeChanged, id);
      await sleep(100);
    }
  })();
  return {
    async stop() {
      stop = true;
      await loop;
    },
  };
}

async function queued(database: Database, where = sql`true`): Promise<number> {
  const [r] = await database.rows<{ n: unknown }>(sql`select count(*) as n from ${jobs} where status = 'queued' and (parent_id is not null or task_count is null) and ${where}`);
  return toNumber(r!.n);
}

async function drainBench() {
  const scratch = await scratchDatabase();
  const database = await openDatabase({ databaseUrl: scratch.url, poolSize: 10 });
  const signals = new Signals();
  try {
    await migrate(database);
    const provider = newId('account');
    const client = newId('account');
    await database.db.insert(accounts).values([
      { id: provider, name: 'provider', kind: 'provider' },
      { id: client, name: 'client', kind: 'client' },
    ]);
    const reset = async () => {
      await database.db.execute(sql`update ${jobs} set status = 'cancelled' where status in ('queued', 'leased', 'running')`);
      await database.db.execute(sql`update ${jobs} set tasks_active = 0`);
      await database.db.execute(sql`delete from ${nodes}`);
      const rows = Array.from({ length: nodeCount }, (_, i) => ({
        id: newId('node'),
        accountId: provider,
        name: `rig-${i}`,
        status: 'online' as const,
        publicKey: { kty: 'OKP', crv: 'Ed25519', x: `bench${i}` },
        cpuMillis: 16_000,
        memoryMb: 128_000,
        diskMb: 4_000_000,
        lastHeartbeatAt: new Date(),
      }));
      for (let k = 0; k < rows.length; k += 500) await database.db.insert(nodes).values(rows.slice(k, k + 500));
    };

    /** Queues what `submit` makes, then runs the loop and agents until nothing is queued; placements per second. */
    const drain = async (what: string, submit: () => Promise<void>) => {
      await reset();
      await submit();
      const loop = new SchedulerLoop({ database, clock, log: silentLogger, signals, leaseTtlSeconds: 300, batchSize: 1000, tickMs: 1000, onLeased: () => {} });
      const agents = startAgents(database, signals);
      const t0 = performance.now();
      await loop.start();
      signals.emit(topics.schedule);
      while ((await queued(database)) > 0 && performance.now() - t0 < maxSeconds * 1000) await sleep(100);
      const secs = (performance.now() - t0) / 1000;
      const placed = loop.totals.placed;
      await loop.stop();
      await agents.stop();
      out(`arrays_drain_${what}_placements_per_s`, (placed / secs).toFixed(0), 'jobs/s');
      out(`arrays_drain_${what}_s`, secs.toFixed(1), 's');
      out(`arrays_drain_${what}_conflicts`, loop.totals.conflicts, 'batches');
    };

    await drain('array', async () => {
      await submitArray(database.db, client, JobSpec.parse({ ...base, tasks: { count: taskCount } }), undefined, clock.now());
    });
    await drain('single_jobs', async () => {
      const spec = JobSpec.parse(base);
      for (let i = 0; i < taskCount; i++) await submitJob(database.db, client, spec, undefined, clock.now());
    });

    // An array held to 300 at once, and 1,000 plain jobs behind it: they run beside it at once.
    await reset();
    const loop = new SchedulerLoop({ database, clock, log: silentLogger, signals, leaseTtlSeconds: 300, batchSize: 1000, tickMs: 1000, onLeased: () => {} });
    const agents = startAgents(database, signals);
    await loop.start();
    const { job: array } = await submitArray(database.db, client, JobSpec.parse({ ...base, tasks: { count: taskCount, maxParallel: 300 } }), undefined, clock.now());
    signals.emit(topics.schedule);
    await sleep(1500);
    const spec = JobSpec.parse({ ...base, name: 'behind' });
    for (let i = 0; i < 1000; i++) {
      await submitJob(database.db, client, spec, undefined, clock.now());
      if (i % 50 === 49) signals.emit(topics.schedule);
    }
    signals.emit(topics.schedule);
    const t0 = performance.now();
    const waiting = await queued(database, sql`name = 'behind'`);
    while ((await queued(database, sql`name = 'behind'`)) > 0 && performance.now() - t0 < maxSeconds * 1000) await sleep(20);
    out('arrays_behind_max_parallel_queued_at_last_submit', waiting, 'of 1000 jobs');
    out('arrays_behind_max_parallel_all_leased_after_last_submit', ((performance.now() - t0) / 1000).toFixed(2), 's');
    const [peak] = await database.rows<{ n: unknown }>(sql`select tasks_active as n from ${jobs} where id = ${array.id}`);
    out('arrays_max_parallel_300_active_now', toNumber(peak!.n), 'tasks');
    await loop.stop();
    await agents.stop();
  } finally {
    await database.close().catch(() => {});
    await scratch.drop();
  }
}

if (process.env.BENCH_SKIP_SUBMIT !== '1') for (const db of dbs) await submitBench(db);
if (dbs.includes('postgres') && process.env.BENCH_SKIP_DRAIN !== '1') await drainBench();
process.exit(0);
