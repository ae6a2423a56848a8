// Heartbeat ingest: 10,000 simulated nodes of 8 GPUs each, each heartbeating every 5 s (2,000
// heartbeats/s) with its own EdDSA agent token, against a coordinator process over a scratch
// PostgreSQL database (created and dropped here). The coordinator runs as its own process so its
// CPU and memory are its own, not the load generator's. Prints `name: value unit` lines; the
// target is p99 under 100 ms at the full rate.
//
//   npx tsx test/bench/heartbeat.bench.ts      (BENCH_NODES=10000 BENCH_SECONDS=40 BENCH_INTERVAL_S=5)
import { randomBytes } from 'node:crypto';
import postgres from 'postgres';
import { spawnCoordinator } from '../support/coordinator-process.ts';
import { benchAudience, cpuTicks, gpusPerNode, HeartbeatSender, openLoop, percentile, postgresTicks, rssMb, seedNodes } from './heartbeat-load.ts';

const nodeCount = Number(process.env.BENCH_NODES ?? 10_000);
const intervalS = Number(process.env.BENCH_INTERVAL_S ?? 5);
const warmupS = Number(process.env.BENCH_WARMUP_S ?? 5);
const seconds = Number(process.env.BENCH_SECONDS ?? 40);
const adminUrl = process.env.GANTRY_TEST_POSTGRES_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres';
const targetRate = nodeCount / intervalS;

// ---------------------------------------------------------------------------------------------
// A scratch database with the nodes registered (straight into the tables: registration is
// tested through its API elsewhere; this measures heartbeats).

const dbName = `gantry_bench_${randomBytes(5).toString('hex')}`;
const admin = postgres(adminUrl, { max: 1, onnotice: () => {}, connect_timeout: 3 });
try {
  await admin.unsafe(`create database ${dbName}`);
} catch (err) {
  console.log(`# heartbeat bench skipped: no PostgreSQL at ${adminUrl} (${(err as Error).message})`);
  await admin.end({ timeout: 1 });
  process.exit(0);
}
const databaseUrl = adminUrl.replace(/\/[^/]*$/, `/${dbName}`);
// Stopped early (timeout, Ctrl-C): the coordinator and the scratch database go too.
let cleanup = async () => {};
for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.once(signal, () => {
    void cleanup().finally(() => process.exit(130));
  });
}
cleanup = async () => {
  await admin.unsafe(`drop database if exists ${dbName} with (force)`).catch(() => {});
};

const seedStarted = performance.now();
const sims = await seedNodes(databaseUrl, nodeCount);
const seedSeconds = (performance.now() - seedStarted) / 1000;

// ---------------------------------------------------------------------------------------------
// The coordinator, as its own process.

const coordinator = spawnCoordinator({
  PORT: '0',
  HOST: '127.0.0.1',
  DATABASE_URL: databaseUrl,
  GANTRY_NAME: benchAudience,
  GANTRY_LOG_REQUESTS: 'false',
  GANTRY_DB_POOL_SIZE: process.env.BENCH_POOL ?? '20',
  GANTRY_DB_HEARTBEAT_POOL_SIZE: process.env.BENCH_HEARTBEAT_POOL ?? '',
},
  [],
  // e.g. BENCH_NODE_ARGS='--cpu-prof --cpu-prof-dir=/tmp/prof' to profile the coordinator.
  process.env.BENCH_NODE_ARGS?.split(' ').filter(Boolean) ?? [],
);
cleanup = async () => {
  await coordinator.stop(2_000).catch(() => {});
  await admin.unsafe(`drop database if exists ${dbName} with (force)`).catch(() => {});
};
const { url: base } = await coordinator.ready;
const pid = coordinator.child.pid!;
const sender = new HeartbeatSender(base);
const send = (s: (typeof sims)[number]) => sender.send(s);

// ---------------------------------------------------------------------------------------------
// 1. Cold start: every node's first heartbeat (a fresh token each: a verify and a key lookup),
//    64 at a time, as after a coordinator restart. 2. Capacity: heartbeats back to back from
//    64 connections. 3. The open loop at the target rate, each node at its own phase in the
//    interval, latencies from the moment each was sent.

const statuses = new Map<number, number>();
const count = (status: number) => statuses.set(status, (statuses.get(status) ?? 0) + 1);

async function closedLoop(concurrency: number, until: (sentSoFar: number) => boolean): Promise<{ n: number; s: number }> {
  let next = 0;
  const t0 = performance.now();
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (until(next)) count(await send(sims[next++ % nodeCount]!));
    }),
  );
  return { n: next, s: (performance.now() - t0) / 1000 };
}

const cold = await closedLoop(64, (i) => i < nodeCount);
const capacityEnd = performance.now() + Number(process.env.BENCH_CAPACITY_S ?? 8) * 1000;
const capCpu0 = [cpuTicks(pid), postgresTicks(dbName), process.cpuUsage()] as const;
const capacity = await closedLoop(64, () => performance.now() < capacityEnd);
const capCpu = [(cpuTicks(pid) - capCpu0[0]) / 100, (postgresTicks(dbName) - capCpu0[1]) / 100, process.cpuUsage(capCpu0[2])] as const;

let maxRss = 0;
let ticks = 0;
let cpuStart = 0;
let pgStart = 0;
let genStart = process.cpuUsage();
const { latencies, measuredS, lateMs, slowest } = await openLoop(sender, sims, {
  intervalS,
  warmupS,
  seconds,
  count,
  onMeasureStart: () => {
    cpuStart = cpuTicks(pid);
    pgStart = postgresTicks(dbName);
    genStart = process.cpuUsage();
  },
  onTick: () => {
    if (++ticks % 50 === 0) maxRss = Math.max(maxRss, rssMb(pid));
  },
});
const cpuS = (cpuTicks(pid) - cpuStart) / 100;
const pgS = (postgresTicks(dbName) - pgStart) / 100;
const gen = process.cpuUsage(genStart);
const genS = (gen.user + gen.system) / 1e6;

const rows = async (q: string) => {
  const c = postgres(databaseUrl, { max: 1, onnotice: () => {} });
  try {
    return await c.unsafe(q);
  } finally {
    await c.end({ timeout: 2 });
  }
};
const [metricsRows] = await rows('select count(*)::int as n, count(distinct node_id)::int as nodes, count(distinct at)::int as minutes from node_metrics');
const [online] = await rows(`select count(*)::int as n from nodes where status = 'online' and metrics is not null`);

await coordinator.stop();
sender.agent.destroy();
await admin.unsafe(`drop database if exists ${dbName} with (force)`);
await admin.end({ timeout: 5 });

latencies.sort((a, b) => a - b);
const pct = (p: number) => percentile(latencies, p);
const errors = [...statuses].filter(([s]) => s !== 200).reduce((n, [, c]) => n + c, 0);
console.log(`heartbeat_nodes: ${nodeCount} nodes`);
console.log(`heartbeat_gpus: ${nodeCount * gpusPerNode} gpus`);
console.log(`heartbeat_seed: ${seedSeconds.toFixed(1)} s`);
console.log(`heartbeat_cold_start: ${cold.s.toFixed(1)} s (first heartbeat of every node, 64 at a time)`);
console.log(`heartbeat_capacity: ${(capacity.n / capacity.s).toFixed(0)} heartbeats/s (back to back, 64 connections)`);
console.log(
  `heartbeat_capacity_cpu_per_heartbeat: coordinator ${((capCpu[0] / capacity.n) * 1e6).toFixed(0)} us, postgres ${((capCpu[1] / capacity.n) * 1e6).toFixed(0)} us, load generator ${(((capCpu[2].user + capCpu[2].system) / capacity.n)).toFixed(0)} us`,
);
console.log(`heartbeat_capacity_cpu: coordinator ${((capCpu[0] / capacity.s) * 100).toFixed(0)} %, postgres ${((capCpu[1] / capacity.s) * 100).toFixed(0)} % of one core`);
console.log(`heartbeat_target_rate: ${targetRate.toFixed(0)} heartbeats/s`);
console.log(`heartbeat_achieved_rate: ${(latencies.length / measuredS).toFixed(0)} heartbeats/s`);
console.log(`heartbeat_p50: ${pct(50).toFixed(1)} ms`);
console.log(`heartbeat_p99: ${pct(99).toFixed(1)} ms`);
console.log(`heartbeat_max: ${(latencies.at(-1) ?? NaN).toFixed(1)} ms`);
console.log(`heartbeat_generator_lag_max: ${lateMs.toFixed(0)} ms`);
console.log(`heartbeat_errors: ${errors} requests`);
console.log(`heartbeat_coordinator_cpu: ${((cpuS / measuredS) * 100).toFixed(0)} % of one core`);
console.log(`heartbeat_coordinator_cpu_per_heartbeat: ${((cpuS / latencies.length) * 1e6).toFixed(0)} us`);
console.log(`heartbeat_postgres_cpu: ${((pgS / measuredS) * 100).toFixed(0)} % of one core`);
console.log(`heartbeat_load_generator_cpu: ${((genS / measuredS) * 100).toFixed(0)} % of one core`);
console.log(`heartbeat_coordinator_rss_max: ${maxRss.toFixed(0)} MB`);
console.log(`heartbeat_node_metrics_rows: ${metricsRows!.n} rows`);
console.log(`heartbeat_node_metrics_rows_per_node_minute: ${(metricsRows!.n / Math.max(1, metricsRows!.nodes * metricsRows!.minutes)).toFixed(2)} rows`);
console.log(`heartbeat_nodes_with_metrics: ${online!.n} nodes`);
if (process.env.BENCH_DEBUG) console.error(`# coordinator stdout lines: ${coordinator.stdout.length}; last: ${coordinator.stdout.slice(-3).join(' | ').slice(0, 600)}`);
if (process.env.BENCH_DEBUG) console.error(`# slowest per second: ${[...slowest].map(([t, ms]) => `${t}s:${ms.toFixed(0)}`).join(' ')}`);
if (errors) console.error(`# statuses: ${JSON.stringify(Object.fromEntries(statuses))}`);
process.exit(errors ? 1 : 0);
