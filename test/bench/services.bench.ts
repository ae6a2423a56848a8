// Requests to a service job through the coordinator against the same job reached directly: the
// coordinator and the agent as their own processes (agent under --unsafe-process-runtime), the
// job a small keep-alive Node server on the node's loopback. Closed-loop keep-alive HTTP/1.1
// clients in this process, for small answers at 50 and at 1 connection, and for a streamed
// answer (64 chunks) at 10. Direct and proxied runs alternate, twice each. Prints `name: value unit` lines.
//
//   npx tsx test/bench/services.bench.ts                 the coordinator on PGlite (in its own process)
//   BENCH_DB=postgres BENCH_SECONDS=10 npx tsx test/bench/services.bench.ts   on a scratch PostgreSQL database
import { mkdtemp, rm } from 'node:fs/promises';
import { Agent, request } from 'node:http';
import { createServer } from 'node:net';
import { loadavg, tmpdir } from 'node:os';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import postgres from 'postgres';
import { ApiClient } from '../../shared/client.ts';
import type { Job } from '../../shared/jobs.ts';
import { spawnAgent } from '../support/agent-process.ts';
import { spawnCoordinator } from '../support/coordinator-process.ts';
import { loopback } from '../support/service-client.ts';

const seconds = Number(process.env.BENCH_SECONDS ?? 5);

/** The job: 'ok' for /small, 64 chunks of 1 KiB (one per tick) for /stream; keep-alive. */
const upstreamSource = `
const http = require('node:http');
const chunk = Buffer.alloc(1024, 'x');
http.createServer((req, res) => {
  if (req.url === '/stream') {
    res.writeHead(200, { 'content-type': 'text/event-stream' });
    let n = 0;
    const next = () => (n++ < 64 ? (res.write(chunk), setImmediate(next)) : res.end());
    return next();
  }
  res.writeHead(200, { 'content-type': 'text/plain', 'content-length': 2 });
  res.end('ok');
}).listen(Number(process.env.PORT), '127.0.0.1');
`;

const freePort = () =>
  new Promise<number>((resolve) => {
    const s = createServer().listen(0, '127.0.0.1', () => {
      const { port } = s.address() as { port: number };
      s.close(() => resolve(port));
    });
  });

const percentile = (sorted: number[], p: number) => sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;

function get(agent: Agent, url: URL, headers: Record<string, string>): Promise<number> {
  return new Promise((resolve, reject) => {
    const req = request(url, { agent, headers, lookup: loopback }, (res) => {
      res.on('data', () => {});
      res.on('end', () => resolve(res.statusCode ?? 0));
    });
    req.on('error', reject);
    req.end();
  });
}

/** `connections` clients back to back for `seconds`: requests per second and latency percentiles (ms). */
async function load(target: string, headers: Record<string, string>, connections: number) {
  const agent = new Agent({ keepAlive: true, maxSockets: connections });
  const url = new URL(target);
  // Warm the connections and the coordinator's caches.
  await Promise.all(Array.from({ length: connections }, () => get(agent, url, headers)));
  const latencies: number[] = [];
  let failures = 0;
  const started = performance.now();
  const end = started + seconds * 1000;
  await Promise.all(
    Array.from({ length: connections }, async () => {
      while (performance.now() < end) {
        const t = performance.now();
        const status = await get(agent, url, headers);
        latencies.push(performance.now() - t);
        if (status !== 200) failures++;
      }
    }),
  );
  const elapsed = (performance.now() - started) / 1000;
  agent.destroy();
  latencies.sort((a, b) => a - b);
  return { rps: latencies.length / elapsed, p50: percentile(latencies, 50), p99: percentile(latencies, 99), failures };
}

const work = await mkdtemp(path.join(tmpdir(), 'gantry-bench-services-'));
// e.g. BENCH_NODE_ARGS='--cpu-prof --cpu-prof-dir=/tmp/prof' to profile the coordinator.
const nodeArgs = process.env.BENCH_NODE_ARGS?.split(' ').filter(Boolean) ?? [];
// On PGlite every query runs on the coordinator's own thread; PostgreSQL is the production path.
const postgresAdminUrl = process.env.GANTRY_TEST_POSTGRES_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres';
let databaseUrl = '';
let dropDatabase = async () => {};
if (process.env.BENCH_DB === 'postgres') {
  const name = `gantry_bench_services_${randomBytes(4).toString('hex')}`;
  const admin = postgres(postgresAdminUrl, { max: 1, onnotice: () => {} });
  await admin.unsafe(`create database ${name}`);
  databaseUrl = postgresAdminUrl.replace(/\/[^/]*$/, `/${name}`);
  dropDatabase = async () => {
    await admin.unsafe(`drop database if exists ${name} with (force)`);
    await admin.end({ timeout: 5 });
  };
}
const coordinator = spawnCoordinator({ PORT: '0', HOST: '127.0.0.1', GANTRY_DATA_DIR: 'memory://', DATABASE_URL: databaseUrl, GANTRY_LOG_REQUESTS: 'false' }, [], nodeArgs);
let agent: ReturnType<typeof spawnAgent> | null = null;
try {
  const { url, adminKey } = await coordinator.ready;
  const admin = new ApiClient({ baseUrl: url, token: adminKey! });
  const keyOf = async (kind: string) => {
    const account = await admin.post<{ id: string }>('/v1/accounts', { name: kind, kind });
    return (await admin.post<{ key: string }>(`/v1/accounts/${account.id}/keys`, { scopes: [kind] })).key;
  };
  const clientKey = await keyOf('client');
  const provider = new ApiClient({ baseUrl: url, token: await keyOf('provider') });
  const { token } = await provider.post<{ token: string }>('/v1/enrollment-tokens', {});
  // e.g. BENCH_AGENT_NODE_ARGS='--cpu-prof --cpu-prof-dir=/tmp/prof' to profile the agent (through a wrapping node).
  const agentArgs = process.env.BENCH_AGENT_NODE_ARGS?.split(' ').filter(Boolean) ?? [];
  agent = spawnAgent(
    ['join', '--coordinator', url, '--token', token, '--state-dir', path.join(work, 'node'), '--run', '--unsafe-process-runtime', '--heartbeat-seconds', '1'],
    { GANTRY_AGENT_STATE_DIR: '', DOCKER_HOST: 'unix:///nonexistent/gantry-bench-docker.sock' },
    null,
    [],
    agentArgs,
  );
  await agent.waitForLine(/service tunnel open/, 60_000);

  const port = await freePort();
  const client = new ApiClient({ baseUrl: url, token: clientKey });
  const job = await client.post<Job>('/v1/jobs', {
    name: 'bench-upstream',
    image: 'busybox:latest',
    command: [process.execPath, '-e', upstreamSource],
    env: { PORT: String(port) },
    resources: { cpu: 1, memoryMb: 256 },
    service: { port },
  });
  const deadline = Date.now() + 60_000;
  while ((await client.get<Job>(`/v1/jobs/${job.id}`)).service?.state !== 'ready') {
    if (Date.now() > deadline) throw new Error('the service did not become ready');
    await new Promise((r) => setTimeout(r, 200));
  }
  const direct = `http://127.0.0.1:${port}`;
  const proxied = job.serviceUrl!;
  const auth = { authorization: `Bearer ${clientKey}` };

  const cases = [
    { name: 'small_c50', path: '/small', connections: 50 },
    { name: 'small_c1', path: '/small', connections: 1 },
    { name: 'stream_c10', path: '/stream', connections: 10 },
  ];
  const only = process.env.BENCH_CASES?.split(',');
  for (const c of cases.filter((k) => !only || only.includes(k.name))) {
    const best = { direct: { rps: 0, p50: Infinity, p99: Infinity, failures: 0 }, proxied: { rps: 0, p50: Infinity, p99: Infinity, failures: 0 } };
    // Alternate, twice each; keep each side's best run (the machine is shared: the best is the least disturbed).
    for (let round = 0; round < 2; round++) {
      for (const side of ['direct', 'proxied'] as const) {
        const r = await load(`${side === 'direct' ? direct : proxied}${c.path}`, side === 'direct' ? {} : auth, c.connections);
        if (r.rps > best[side].rps) best[side] = r;
      }
    }
    for (const side of ['direct', 'proxied'] as const) {
      const r = best[side];
      console.log(`services_${c.name}_${side}_rps: ${r.rps.toFixed(0)} req/s`);
      console.log(`services_${c.name}_${side}_p50: ${r.p50.toFixed(2)} ms`);
      console.log(`services_${c.name}_${side}_p99: ${r.p99.toFixed(2)} ms`);
      if (r.failures) console.log(`services_${c.name}_${side}_failures: ${r.failures} requests`);
    }
    console.log(`services_${c.name}_load_average: ${loadavg()[0]!.toFixed(1)} (1 min; the machine is shared)`);
    console.log(`services_${c.name}_rps_ratio: ${(best.proxied.rps / best.direct.rps).toFixed(2)} proxied/direct`);
    console.log(`services_${c.name}_p50_added: ${(best.proxied.p50 - best.direct.p50).toFixed(2)} ms`);
  }
  await client.post(`/v1/jobs/${job.id}/cancel`, {});
} finally {
  await agent?.kill('SIGTERM');
  await coordinator.stop();
  await dropDatabase();
  await rm(work, { recursive: true, force: true });
}
