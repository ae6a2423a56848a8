// Job submissions per second through HTTP, 50 concurrent clients, on PGlite and on PostgreSQL.
// The coordinator runs as its own process (as `npm start` runs it), so the load generator does
// not share its event loop. Prints `name: value unit` lines.
//
//   npx tsx test/bench/submit.bench.ts            both databases
//   BENCH_DB=postgres BENCH_SECONDS=20 npx tsx test/bench/submit.bench.ts
import { randomBytes } from 'node:crypto';
import { Agent, request } from 'node:http';
import postgres from 'postgres';
import { spawn } from 'node:child_process';
import { mkdtempSync, openSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { cleanEnv, repoRoot } from '../support/coordinator-process.ts';

const concurrency = Number(process.env.BENCH_CONCURRENCY ?? 50);
const seconds = Number(process.env.BENCH_SECONDS ?? 10);
const warmupSeconds = 2;
const dbs = (process.env.BENCH_DB ?? 'pglite,postgres').split(',');
const postgresAdminUrl = process.env.GANTRY_TEST_POSTGRES_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres';

const body = JSON.stringify({
  name: 'hello',
  image: 'busybox:latest',
  command: ['echo', 'hi'],
  resources: { cpu: 1, memoryMb: 128, gpus: 0 },
});

function post(agent: Agent, url: URL, path: string, key: string, payload: string): Promise<{ status: number; text: string }> {
  return new Promise((resolve, reject) => {
    const req = request(
      {
        agent,
        host: url.hostname,
        port: url.port,
        path,
        method: 'POST',
        headers: {
          authorization: `Bearer ${key}`,
          'content-type': 'application/json',
          'content-length': Buffer.byteLength(payload),
        },
      },
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

/**
 * The coordinator as `npm start` runs it, its stdout (the request log) going to a file as it
 * would to a log collector: a pipe read by this busy process would hold the server up.
 */
function startCoordinatorProcess(env: Record<string, string>) {
  const dir = mkdtempSync(join(tmpdir(), 'gantry-bench-'));
  const logFile = join(dir, 'stdout.log');
  const merged: Record<string, string> = { ...cleanEnv() };
  for (const [k, v] of Object.entries(env)) if (v !== '') merged[k] = v;
  // e.g. BENCH_NODE_ARGS='--cpu-prof --cpu-prof-dir=/tmp/prof' to profile the coordinator.
  const nodeArgs = process.env.BENCH_NODE_ARGS?.split(' ').filter(Boolean) ?? [];
  const child = spawn(process.execPath, [...nodeArgs, '--import', 'tsx', 'coordinator/main.ts'], {
    cwd: repoRoot,
    env: merged,
    stdio: ['ignore', openSync(logFile, 'w'), 'inherit'],
  });
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  return {
    async ready(): Promise<{ url: string; adminKey: string | null }> {
      const deadline = Date.now() + 120_000;
      for (;;) {
        const text = readFileSync(logFile, 'utf8');
        const url = text.match(/^Gantry coordinator listening on (\S+)/m)?.[1];
        if (url) return { url, adminKey: text.match(/^Admin API key: (\S+)$/m)?.[1] ?? null };
        if (child.exitCode !== null || Date.now() > deadline) throw new Error(`the coordinator did not start:\n${text}`);
        await new Promise((r) => setTimeout(r, 50));
      }
    },
    async stop() {
      if (child.exitCode === null) child.kill('SIGTERM');
      await exited;
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

const percentile = (sorted: number[], p: number) => sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;

/** 50 clients submitting back to back for `duration` seconds; latencies in ms. */
async function load(agent: Agent, url: URL, key: string, duration: number) {
  const latencies: number[] = [];
  let failures = 0;
  let firstFailure = '';
  const end = performance.now() + duration * 1000;
  const started = performance.now();
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (performance.now() < end) {
        const t = performance.now();
        const res = await post(agent, url, '/v1/jobs', key, body);
        latencies.push(performance.now() - t);
        if (res.status !== 201) {
          failures++;
          firstFailure ||= `${res.status} ${res.text.slice(0, 200)}`;
        }
      }
    }),
  );
  const elapsed = (performance.now() - started) / 1000;
  return { latencies: latencies.sort((a, b) => a - b), failures, firstFailure, elapsed };
}

async function benchOne(db: string): Promise<boolean> {
  let databaseUrl: string | null = null;
  let dropDatabase = async () => {};
  if (db === 'postgres') {
    const admin = postgres(postgresAdminUrl, { max: 1, onnotice: () => {}, connect_timeout: 3 });
    const name = `gantry_bench_${randomBytes(6).toString('hex')}`;
    try {
      await admin.unsafe(`create database ${name}`);
    } catch (err) {
      await admin.end({ timeout: 1 }).catch(() => {});
      console.log(`# submit on postgres skipped: ${(err as Error).message}`);
      return true;
    }
    databaseUrl = postgresAdminUrl.replace(/\/[^/]*$/, `/${name}`);
    dropDatabase = async () => {
      await admin.unsafe(`drop database if exists ${name} with (force)`);
      await admin.end({ timeout: 5 });
    };
  }
  const coordinator = startCoordinatorProcess({
    PORT: '0',
    HOST: '127.0.0.1',
    DATABASE_URL: databaseUrl ?? '',
    GANTRY_DATA_DIR: 'memory://bench',
    // Settings worth trying under load pass through: GANTRY_DB_POOL_SIZE=20, GANTRY_LOG_REQUESTS=0.
    ...Object.fromEntries(
      ['GANTRY_DB_POOL_SIZE', 'GANTRY_LOG_REQUESTS'].flatMap((k) => (process.env[k] ? [[k, process.env[k]!]] : [])),
    ),
  });
  const agent = new Agent({ keepAlive: true, maxSockets: concurrency });
  try {
    const { url: base, adminKey } = await coordinator.ready();
    const url = new URL(base);
    const account = JSON.parse(
      (await post(agent, url, '/v1/accounts', adminKey!, JSON.stringify({ name: 'bench', kind: 'client' }))).text,
    ) as { id: string };
    const created = await post(agent, url, `/v1/accounts/${account.id}/keys`, adminKey!, JSON.stringify({ scopes: ['client'] }));
    const { key } = JSON.parse(created.text) as { key: string };
    await load(agent, url, key, warmupSeconds);
    const run = await load(agent, url, key, seconds);
    const n = run.latencies.length;
    console.log(`submit_${db}_throughput: ${Math.round(n / run.elapsed)} submits/s`);
    console.log(`submit_${db}_p50: ${percentile(run.latencies, 50).toFixed(1)} ms`);
    console.log(`submit_${db}_p99: ${percentile(run.latencies, 99).toFixed(1)} ms`);
    console.log(`submit_${db}_requests: ${n} requests`);
    console.log(`submit_${db}_failures: ${run.failures} requests`);
    if (run.failures) console.error(`# first failure: ${run.firstFailure}`);
    return run.failures === 0;
  } finally {
    agent.destroy();
    await coordinator.stop();
    await dropDatabase();
  }
}

let ok = true;
for (const db of dbs) ok = (await benchOne(db)) && ok;
process.exit(ok ? 0 : 1);
