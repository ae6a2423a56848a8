// Log followers beside heartbeats: 10,000 simulated nodes heartbeat every 5 s (2,000/s) against
// a coordinator process over a scratch PostgreSQL database while a client reads one queued job
// now and then; the same run is measured without followers, with 1,000 followers of that job
// held open (ten keys of one account, 100 streams each: the per-key cap), and without again.
// Prints `name: value unit` lines; the targets are a heartbeat p99 with followers within 1.2x of
// the runs without, and a job read p99 under 50 ms.
//
//   npx tsx test/bench/log-followers.bench.ts   (BENCH_NODES=10000 BENCH_FOLLOWERS=1000 BENCH_SECONDS=20)
//
// BENCH_POOL and BENCH_HEARTBEAT_POOL set the coordinator's two pools (20, and its default);
// BENCH_NODE_ARGS='--cpu-prof --cpu-prof-dir=DIR' profiles it, and BENCH_MARKS=1 prints each
// measured window in the profile's clock and the slowest heartbeat of each of its seconds.
import { randomBytes } from 'node:crypto';
import { Agent, request, type ClientRequest } from 'node:http';
import { loadavg } from 'node:os';
import postgres from 'postgres';
import { spawnCoordinator } from '../support/coordinator-process.ts';
import { benchAudience, cpuTicks, HeartbeatSender, openLoop, percentile, postgresTicks, seedNodes } from './heartbeat-load.ts';

const nodeCount = Number(process.env.BENCH_NODES ?? 10_000);
const followerCount = Number(process.env.BENCH_FOLLOWERS ?? 1000);
const intervalS = Number(process.env.BENCH_INTERVAL_S ?? 5);
const seconds = Number(process.env.BENCH_SECONDS ?? 20);
const warmupS = Number(process.env.BENCH_WARMUP_S ?? 5);
const readsPerSecond = Number(process.env.BENCH_READS_PER_S ?? 20);
const streamsPerKey = 100;
const adminUrl = process.env.GANTRY_TEST_POSTGRES_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres';

const dbName = `gantry_bench_${randomBytes(5).toString('hex')}`;
const admin = postgres(adminUrl, { max: 1, onnotice: () => {}, connect_timeout: 3 });
try {
  await admin.unsafe(`create database ${dbName}`);
} catch (err) {
  console.log(`# log followers bench skipped: no PostgreSQL at ${adminUrl} (${(err as Error).message})`);
  await admin.end({ timeout: 1 });
  process.exit(0);
}
const databaseUrl = adminUrl.replace(/\/[^/]*$/, `/${dbName}`);
let cleanup = async () => {
  await admin.unsafe(`drop database if exists ${dbName} with (force)`).catch(() => {});
};
for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.once(signal, () => {
    void cleanup().finally(() => process.exit(130));
  });
}

const sims = await seedNodes(databaseUrl, nodeCount);
const coordinator = spawnCoordinator({
  PORT: '0',
  HOST: '127.0.0.1',
  DATABASE_URL: databaseUrl,
  GANTRY_NAME: benchAudience,
  GANTRY_LOG_REQUESTS: 'false',
  GANTRY_DB_POOL_SIZE: process.env.BENCH_POOL ?? '20',
  GANTRY_DB_HEARTBEAT_POOL_SIZE: process.env.BENCH_HEARTBEAT_POOL ?? '',
}, [], process.env.BENCH_NODE_ARGS?.split(' ').filter(Boolean) ?? []);
cleanup = async () => {
  await coordinator.stop(2_000).catch(() => {});
  await admin.unsafe(`drop database if exists ${dbName} with (force)`).catch(() => {});
};
const { url: base, adminKey } = await coordinator.ready;
const target = new URL(base);

// ---------------------------------------------------------------------------------------------
// A client account with ten keys, and a job no node can take: it stays queued.

async function api<T>(method: string, path: string, key: string, body?: unknown): Promise<T> {
  const res = await fetch(new URL(path, base), {
    method,
    headers: { authorization: `Bearer ${key}`, ...(body ? { 'content-type': 'application/json' } : {}) },
    body: body ? JSON.stringify(body) : null,
  });
  if (!res.ok) throw new Error(`${method} ${path}: ${res.status} ${await res.text()}`);
  return (await res.json()) as T;
}
const account = await api<{ id: string }>('POST', '/v1/accounts', adminKey!, { name: 'bench-client', kind: 'client' });
const keys: string[] = [];
for (let i = 0; i < Math.ceil(followerCount / streamsPerKey); i++) {
  keys.push((await api<{ key: string }>('POST', `/v1/accounts/${account.id}/keys`, adminKey!, { scopes: ['client'] })).key);
}
const job = await api<{ id: string; status: string }>('POST', '/v1/jobs', keys[0]!, {
  name: 'followed',
  image: 'busybox',
  command: ['true'],
  resources: { cpu: 1, memoryMb: 64, gpus: 1, gpu: { model: 'NoSuchGPU' } },
});

// ---------------------------------------------------------------------------------------------
// Job reads at a steady rate, measured only while the heartbeats are.

const readAgent = new Agent({ keepAlive: true, maxSockets: 16 });
function readJob(): Promise<number> {
  return new Promise((resolve) => {
    const req = request(
      { agent: readAgent, host: target.hostname, port: target.port, path: `/v1/jobs/${job.id}`, headers: { authorization: `Bearer ${keys[0]}` } },
      (res) => {
        res.resume();
        res.on('end', () => resolve(res.statusCode ?? 0));
      },
    );
    req.on('error', () => resolve(0));
    req.setTimeout(30_000, () => req.destroy());
    req.end();
  });
}

const sender = new HeartbeatSender(base);
const pid = coordinator.child.pid!;
let errors = 0;
const statuses = new Map<string, number>();
const countError = (what: string, status: number) => {
  if (status === 200) return;
  errors++;
  const k = `${what} ${status}`;
  statuses.set(k, (statuses.get(k) ?? 0) + 1);
};

/** One run of the heartbeat load with job reads beside it. */
async function phase(warmup: number) {
  const reads: number[] = [];
  let measuring = false;
  let cpu0 = 0;
  let pg0 = 0;
  let measuredFromUs = 0n;
  const pending = new Set<Promise<void>>();
  const reader = setInterval(() => {
    const counted = measuring;
    const t0 = performance.now();
    const p = readJob().then((status) => {
      countError('job read', status);
      if (counted) reads.push(performance.now() - t0);
      pending.delete(p);
    });
    pending.add(p);
  }, 1000 / readsPerSecond);
  const run = await openLoop(sender, sims, {
    intervalS,
    warmupS: warmup,
    seconds,
    onMeasureStart: () => {
      measuring = true;
      measuredFromUs = process.hrtime.bigint() / 1000n;
      cpu0 = cpuTicks(pid);
      pg0 = postgresTicks(dbName);
    },
    count: (status) => countError('heartbeat', status),
  });
  // Coordinator and PostgreSQL CPU over the measured part, in % of one core.
  if (process.env.BENCH_MARKS) {
    console.log(`# measured window (monotonic us, as in a --cpu-prof profile): ${measuredFromUs} ${process.hrtime.bigint() / 1000n}`);
    console.log(`# slowest heartbeat each second: ${[...run.slowest.values()].map((ms) => ms.toFixed(0)).join(' ')}`);
  }
  const cpu = ((cpuTicks(pid) - cpu0) / run.measuredS).toFixed(0);
  const pg = ((postgresTicks(dbName) - pg0) / run.measuredS).toFixed(0);
  clearInterval(reader);
  await Promise.all(pending);
  run.latencies.sort((a, b) => a - b);
  reads.sort((a, b) => a - b);
  return { heartbeats: run.latencies, rate: run.latencies.length / run.measuredS, reads, cpu, pg };
}

// ---------------------------------------------------------------------------------------------
// Followers: SSE requests held open, their bytes read and dropped.

const followAgent = new Agent({ keepAlive: false, maxSockets: Infinity });
const followers: ClientRequest[] = [];
let followersOpen = 0;
let followersEndedEarly = 0;
let followersRefused = 0;
async function openFollowers(): Promise<number> {
  const started = performance.now();
  await Promise.all(
    Array.from(
      { length: followerCount },
      (_, i) =>
        new Promise<void>((resolve) => {
          const req = request(
            {
              agent: followAgent,
              host: target.hostname,
              port: target.port,
              path: `/v1/jobs/${job.id}/logs?follow=1`,
              headers: { authorization: `Bearer ${keys[Math.floor(i / streamsPerKey)]}`, accept: 'text/event-stream' },
            },
            (res) => {
              if (res.statusCode !== 200) followersRefused++;
              else followersOpen++;
              res.on('data', () => {});
              res.on('end', () => {
                if (res.statusCode === 200) {
                  followersOpen--;
                  if (!closing) followersEndedEarly++;
                }
              });
              resolve();
            },
          );
          req.on('error', () => resolve());
          req.end();
          followers.push(req);
        }),
    ),
  );
  return (performance.now() - started) / 1000;
}
let closing = false;

const without = await phase(warmupS * 2);
const openS = await openFollowers();
const withFollowers = await phase(warmupS);
const heldAtEnd = followersOpen;
closing = true;
for (const req of followers) req.destroy();
const withoutAgain = await phase(warmupS);

await coordinator.stop();
sender.agent.destroy();
readAgent.destroy();
followAgent.destroy();
await admin.unsafe(`drop database if exists ${dbName} with (force)`);
await admin.end({ timeout: 5 });

const p99 = (xs: number[]) => percentile(xs, 99);
const ratioTo = (r: { heartbeats: number[] }) => (p99(withFollowers.heartbeats) / p99(r.heartbeats)).toFixed(2);
const f = (n: number) => n.toFixed(1);
console.log(`log_followers_nodes: ${nodeCount} nodes`);
console.log(`log_followers_followers: ${followerCount} streams (${keys.length} keys)`);
console.log(`log_followers_open_time: ${f(openS)} s (all ${followerCount} answered)`);
console.log(`log_followers_held: ${heldAtEnd} streams open at the end of the run with followers`);
console.log(`log_followers_refused: ${followersRefused} streams`);
console.log(`log_followers_ended_early: ${followersEndedEarly} streams`);
for (const [name, r] of [['without', without], ['with', withFollowers], ['without_again', withoutAgain]] as const) {
  console.log(`log_followers_heartbeat_rate_${name}: ${r.rate.toFixed(0)} heartbeats/s`);
  console.log(`log_followers_heartbeat_p50_${name}: ${f(percentile(r.heartbeats, 50))} ms`);
  console.log(`log_followers_heartbeat_p99_${name}: ${f(p99(r.heartbeats))} ms`);
  console.log(`log_followers_job_read_p50_${name}: ${f(percentile(r.reads, 50))} ms`);
  console.log(`log_followers_job_read_p99_${name}: ${f(p99(r.reads))} ms`);
  console.log(`log_followers_coordinator_cpu_${name}: ${r.cpu} % of one core`);
  console.log(`log_followers_postgres_cpu_${name}: ${r.pg} % of one core`);
}
console.log(`log_followers_heartbeat_p99_ratio_to_before: ${ratioTo(without)} x (with followers / the run before them; target <= 1.2)`);
console.log(`log_followers_heartbeat_p99_ratio_to_after: ${ratioTo(withoutAgain)} x (with followers / the run after them; target <= 1.2)`);
console.log(`log_followers_job_read_p99_with: ${f(p99(withFollowers.reads))} ms (target < 50)`);
console.log(`log_followers_errors: ${errors} requests${statuses.size ? ` (${[...statuses].map(([k, n]) => `${k}: ${n}`).join(', ')})` : ''}`);
console.log(`# load average during the run (other work on this machine skews latencies): ${loadavg().map((l) => l.toFixed(1)).join(' ')}`);
process.exit(errors || followersRefused ? 1 : 0);
