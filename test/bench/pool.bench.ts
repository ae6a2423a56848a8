// GET /v1/pool under 100 concurrent readers with 10,000 nodes and 80,000 GPUs registered, on a
// scratch PostgreSQL database (created and dropped here). Prints `name: value unit` lines; the
// target is p99 under 50 ms.
//
//   npx tsx test/bench/pool.bench.ts            (BENCH_SECONDS=15 BENCH_READERS=100 by default)
import { randomBytes } from 'node:crypto';
import { Worker } from 'node:worker_threads';
import { sql } from 'drizzle-orm';
import postgres from 'postgres';
import { loadConfig } from '../../coordinator/config.ts';
import { migrate } from '../../coordinator/db/migrate.ts';
import { openDatabase } from '../../coordinator/db/open.ts';
import { accounts, gpus, jobs, nodes } from '../../coordinator/db/schema/index.ts';
import { silentLogger } from '../../coordinator/log.ts';
import { computePool } from '../../coordinator/pool/stats.ts';
import { startCoordinator } from '../../coordinator/server.ts';
import { newId } from '../../shared/ids.ts';
import type { Pool } from '../../shared/pool.ts';

const nodeCount = Number(process.env.BENCH_NODES ?? 10_000);
const gpusPerNode = 8;
const readers = Number(process.env.BENCH_READERS ?? 100);
const seconds = Number(process.env.BENCH_SECONDS ?? 15);
// With 2 cores the readers get one thread each beside the server's; BENCH_WORKERS to change.
const workerCount = Number(process.env.BENCH_WORKERS ?? 2);
const adminUrl = process.env.GANTRY_TEST_POSTGRES_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres';

const models = [
  ['NVIDIA H100 80GB HBM3', 81_559],
  ['NVIDIA A100-SXM4-80GB', 81_920],
  ['NVIDIA A100-SXM4-40GB', 40_960],
  ['NVIDIA L40S', 46_068],
  ['NVIDIA GeForce RTX 4090', 24_564],
  ['NVIDIA RTX A5000', 24_564],
] as const;
const regions = ['eu-west', 'eu-central', 'us-east', 'us-west', 'ap-south', null];

const readerScript = `
const { parentPort, workerData } = require('node:worker_threads');
const { target, readers, seconds } = workerData;
const latencies = [];
let errors = 0;
// The first two seconds open the connections and are not counted.
const from = performance.now() + 2000;
const until = from + seconds * 1000;
Promise.all(Array.from({ length: readers }, async () => {
  while (performance.now() < until) {
    const t0 = performance.now();
    let ok = true;
    try {
      const res = await fetch(target);
      await res.arrayBuffer();
      ok = res.status === 200;
    } catch { ok = false; }
    if (t0 >= from) {
      latencies.push(performance.now() - t0);
      if (!ok) errors++;
    }
  }
})).then(() => parentPort.postMessage({ latencies, errors }));
`;

const pct = (xs: number[], p: number) => xs[Math.min(xs.length - 1, Math.floor((p / 100) * xs.length))]!;

const name = `gantry_bench_${randomBytes(5).toString('hex')}`;
const admin = postgres(adminUrl, { max: 1, onnotice: () => {} });
await admin.unsafe(`create database ${name}`);
const url = adminUrl.replace(/\/[^/]*$/, `/${name}`);
const database = await openDatabase({ databaseUrl: url, poolSize: 10 });
try {
  await migrate(database);
  const { db } = database;

  // --- seed -------------------------------------------------------------------------------
  const seedStarted = performance.now();
  const providers = Array.from({ length: 200 }, (_, i) => ({ id: newId('account'), name: `provider-${i}`, kind: 'provider' as const }));
  await db.insert(accounts).values(providers);
  let rnd = 42;
  const rand = () => ((rnd = (rnd * 1_103_515_245 + 12_345) % 2 ** 31) / 2 ** 31);
  const now = Date.now();
  for (let start = 0; start < nodeCount; start += 500) {
    const nodeRows = [];
    const gpuRows = [];
    for (let i = start; i < Math.min(nodeCount, start + 500); i++) {
      const id = newId('node');
      const status = i % 10 === 9 ? 'offline' : 'online';
      const [model, memoryMb] = models[i % models.length]!;
      const mig = model.includes('A100-SXM4-80GB') && i % 4 === 0;
      nodeRows.push({
        id,
        accountId: providers[i % providers.length]!.id,
        name: `rig-${i}`,
        status: status as 'online' | 'offline',
        draining: i % 50 === 7,
        region: regions[i % regions.length],
        publicKey: { kty: 'OKP', crv: 'Ed25519', x: `bench${i}` },
        cpuMillis: 64_000,
        memoryMb: 512_000,
        allocatedCpuMillis: 16_000,
        allocatedMemoryMb: 128_000,
        priceGpuHourMicros: Math.round((0.4 + rand() * 4) * 100) * 10_000,
        lastHeartbeatAt: new Date(now - Math.round(rand() * 10_000)),
      });
      for (let g = 0; g < gpusPerNode; g++) {
        const uuid = `GPU-${id.slice(5)}-${g}`;
        gpuRows.push({
          nodeId: id,
          id: mig ? `MIG-${uuid}` : uuid,
          index: g,
          uuid,
          model,
          memoryMb: mig ? 9_728 : memoryMb,
          driverVersion: '550.54.15',
          cudaVersion: '12.4',
          mig: mig ? { gpuInstanceId: g, computeInstanceId: 0 } : null,
          jobId: rand() < 0.3 ? `job_bench${String(i * 8 + g).padStart(17, '0')}` : null,
          utilizationPct: Math.round(rand() * 100),
        });
      }
    }
    await db.insert(nodes).values(nodeRows);
    for (let k = 0; k < gpuRows.length; k += 2000) await db.insert(gpus).values(gpuRows.slice(k, k + 2000));
  }
  // A queue and an hour of finished jobs, so those parts of the answer have work to do too.
  const client = newId('account');
  await db.insert(accounts).values({ id: client, name: 'client', kind: 'client' });
  const jobRows = Array.from({ length: 6000 }, (_, i) => {
    const queued = i < 2000;
    const at = new Date(now - Math.round(rand() * 7_200_000));
    return {
      id: newId('job', at.getTime()),
      accountId: client,
      name: `bench-${i}`,
      spec: { name: `bench-${i}`, image: 'busybox:latest', command: ['true'], resources: { cpu: 1, memoryMb: 64, diskMb: 10_240, gpus: 1 }, timeoutSeconds: 60, maxAttempts: 1, priority: 0, network: 'bridge' as const },
      specDigest: 'sha256:' + '0'.repeat(64),
      status: queued ? ('queued' as const) : i % 5 === 0 ? ('failed' as const) : ('succeeded' as const),
      cpuMillis: 1000,
      memoryMb: 64,
      gpuCount: 1,
      gpuModel: queued ? models[i % models.length]![0] : null,
      maxAttempts: 1,
      createdAt: at,
      updatedAt: at,
      startedAt: queued ? null : at,
      finishedAt: queued ? null : new Date(at.getTime() + 60_000),
    };
  });
  for (let k = 0; k < jobRows.length; k += 1000) await db.insert(jobs).values(jobRows.slice(k, k + 1000));
  await database.rows(sql`analyze`);
  console.log(`# seeded ${nodeCount} nodes, ${nodeCount * gpusPerNode} GPUs, ${jobRows.length} jobs in ${((performance.now() - seedStarted) / 1000).toFixed(1)} s`);

  // --- one uncached computation, as the cache refresh runs it ------------------------------
  const computeTimes: number[] = [];
  let sample: Pool | null = null;
  for (let i = 0; i < 15; i++) {
    const t0 = performance.now();
    sample = await computePool(database, new Date());
    computeTimes.push(performance.now() - t0);
  }
  computeTimes.sort((a, b) => a - b);
  if (sample!.gpus.online + sample!.migDevices.online + sample!.gpus.offline + sample!.migDevices.offline !== nodeCount * gpusPerNode) {
    throw new Error('the pool does not add up to the GPUs inserted');
  }
  console.log(`pool_compute_uncached_median_ms: ${pct(computeTimes, 50).toFixed(1)} ms`);
  console.log(`pool_compute_uncached_max_ms: ${computeTimes[computeTimes.length - 1]!.toFixed(1)} ms`);

  // --- 100 readers against the real server -------------------------------------------------
  const config = loadConfig({ PORT: '0', HOST: '127.0.0.1', DATABASE_URL: url, GANTRY_LOG_REQUESTS: 'false' });
  const coordinator = await startCoordinator({ config, log: silentLogger, database });
  try {
    const target = `${coordinator.url}/v1/pool`;
    for (let i = 0; i < 20; i++) await (await fetch(target)).arrayBuffer(); // warm up
    // The readers run in worker threads: their own event loops, as a load generator would be.
    const workers = workerCount;
    const results = await Promise.all(
      Array.from({ length: workers }, (_, w) => {
        const share = Math.floor(readers / workers) + (w < readers % workers ? 1 : 0);
        return new Promise<{ latencies: number[]; errors: number }>((resolve, reject) => {
          const worker = new Worker(readerScript, { eval: true, workerData: { target, readers: share, seconds } });
          worker.once('message', resolve);
          worker.once('error', reject);
        });
      }),
    );
    const latencies = results.flatMap((r) => r.latencies);
    const errors = results.reduce((n, r) => n + r.errors, 0);
    latencies.sort((a, b) => a - b);
    console.log(`pool_readers: ${readers} connections`);
    console.log(`pool_requests: ${latencies.length} requests`);
    console.log(`pool_throughput: ${(latencies.length / seconds).toFixed(0)} req/s`);
    console.log(`pool_p50_ms: ${pct(latencies, 50).toFixed(1)} ms`);
    console.log(`pool_p99_ms: ${pct(latencies, 99).toFixed(1)} ms`);
    console.log(`pool_max_ms: ${latencies[latencies.length - 1]!.toFixed(1)} ms`);
    console.log(`pool_errors: ${errors} requests`);
    console.log(`pool_p99_under_50ms: ${pct(latencies, 99) < 50 ? 1 : 0} bool`);
    // The server's own view (request in to response out, without the client or the socket queue),
    // from its latency histogram: the upper bound of the bucket that holds the 99th percentile.
    const metric = await coordinator.deps.metrics.httpDuration.get();
    const buckets = metric.values
      .filter((v) => v.metricName === 'gantry_http_request_duration_seconds_bucket' && v.labels.route === '/v1/pool')
      .map((v) => ({ le: Number((v.labels as Record<string, string | number>).le), n: v.value }))
      .sort((a, b) => a.le - b.le);
    const total = buckets[buckets.length - 1]?.n ?? 0;
    const p99 = buckets.find((b) => b.n >= total * 0.99)?.le ?? NaN;
    console.log(`pool_server_side_p99_bucket_ms: ${(p99 * 1000).toFixed(0)} ms`);
  } finally {
    await coordinator.close();
  }
} finally {
  await database.close();
  await admin.unsafe(`drop database if exists ${name} with (force)`);
  await admin.end({ timeout: 5 });
}
