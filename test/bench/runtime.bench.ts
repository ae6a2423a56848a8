// The job runtime end to end: the coordinator in this process (PGlite, loopback), the agent as
// its own process on this machine's Docker engine with the busybox test image, which it pulls by
// digest from the loopback registry (each lease resolves the tag to a digest at the registry).
//
//   lease → running       the job's `leased` event to its `running` event (the agent verified the
//                         lease, prepared, created and started the container, and reported)
//   exit → succeeded      the container's exit (the engine's `die` event) to the job's `succeeded`
//                         event (logs flushed, outputs checked, container removed, reported)
//   log throughput        lines of `seq 1 N` per second, from the container's start to the last
//                         line read by a client following the log (server-sent events)
//
// npx tsx test/bench/runtime.bench.ts   (prints `name: value unit` lines; needs Docker)
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import Docker from 'dockerode';
import { ApiClient } from '../../shared/client.ts';
import type { Job } from '../../shared/jobs.ts';
import { spawnAgent, startLocalCoordinator } from '../support/agent-process.ts';
import { dockerAvailable, dockerOptions, dockerTestImage } from '../support/docker-env.ts';

const jobsToRun = Number(process.env.BENCH_RUNTIME_JOBS ?? 100);
const logLines = Number(process.env.BENCH_RUNTIME_LOG_LINES ?? 500_000);

const available = await dockerAvailable();
if (!available.ok) {
  console.log(`runtime bench skipped: ${available.why}`);
  process.exit(0);
}

const engine = new Docker(dockerOptions());
const c = await startLocalCoordinator('pglite', {});
const work = await mkdtemp(path.join(tmpdir(), 'gantry-runtime-bench-'));
const admin = c.admin;
const p = await admin.post<{ id: string }>('/v1/accounts', { name: 'bench-provider', kind: 'provider' });
const provider = new ApiClient({ baseUrl: c.url, token: (await admin.post<{ key: string }>(`/v1/accounts/${p.id}/keys`, { scopes: ['provider'] })).key });
const a = await admin.post<{ id: string }>('/v1/accounts', { name: 'bench-client', kind: 'client' });
const clientKey = (await admin.post<{ key: string }>(`/v1/accounts/${a.id}/keys`, { scopes: ['client'] })).key;
const client = new ApiClient({ baseUrl: c.url, token: clientKey });

const { token } = await provider.post<{ token: string }>('/v1/enrollment-tokens', {});
const agent = spawnAgent(['join', '--coordinator', c.url, '--token', token, '--state-dir', path.join(work, 'node'), '--run', '--heartbeat-seconds', '2'], {
  GANTRY_AGENT_STATE_DIR: '',
});
const joined = await agent.waitForLine(/as node (node_\w+)/, 60_000);
const nodeId = /as node (node_\w+)/.exec(joined)![1]!;
await agent.waitForLine(/connected to the coordinator/, 60_000);

// Container exits as the engine saw them, by job id.
const dies = new Map<string, number>();
const starts = new Map<string, number>();
const events = (await engine.getEvents({ filters: { type: ['container'], event: ['die', 'start'], label: [`io.gantry.node=${nodeId}`] } })) as NodeJS.ReadableStream;
let rest = '';
events.on('data', (b: Buffer) => {
  rest += b.toString();
  let nl: number;
  while ((nl = rest.indexOf('\n')) >= 0) {
    const line = rest.slice(0, nl);
    rest = rest.slice(nl + 1);
    try {
      const e = JSON.parse(line) as { Action: string; timeNano: number; Actor: { Attributes: Record<string, string> } };
      const job = e.Actor.Attributes['io.gantry.job'];
      if (!job) continue;
      (e.Action === 'die' ? dies : starts).set(job, e.timeNano / 1e6);
    } catch {
      /* a torn line */
    }
  }
});

const spec = (command: string[]) => ({
  name: 'bench',
  image: dockerTestImage,
  command,
  resources: { cpu: 0.5, memoryMb: 64 },
  maxAttempts: 1,
  constraints: { nodeId },
});

async function ended(id: string): Promise<Job> {
  for (;;) {
    const j = await client.get<Job>(`/v1/jobs/${id}`);
    if (['succeeded', 'failed', 'cancelled'].includes(j.status)) return j;
    await new Promise((r) => setTimeout(r, 20));
  }
}

const pct = (xs: number[], q: number) => {
  const s = [...xs].sort((x, y) => x - y);
  return s[Math.min(s.length - 1, Math.ceil(q * s.length) - 1)]!;
};

// Warm-up: the image and the first container path.
await ended((await client.post<Job>('/v1/jobs', spec(['echo', 'warm']))).id);

const leaseToRunning: number[] = [];
const exitToSucceeded: number[] = [];
const started = Date.now();
for (let i = 0; i < jobsToRun; i++) {
  const j = await client.post<Job>('/v1/jobs', spec(['echo', `job ${i}`]));
  const end = await ended(j.id);
  if (end.status !== 'succeeded') throw new Error(`${j.id} ended ${end.status}: ${end.error}`);
  const ev = (await client.get<{ items: { at: string; to: string; from: string | null }[] }>(`/v1/jobs/${j.id}/events`)).items;
  const at = (to: string) => Date.parse(ev.find((e) => e.to === to && e.from !== to)!.at);
  leaseToRunning.push(at('running') - at('leased'));
  for (let t = 0; !dies.has(j.id) && t < 100; t++) await new Promise((r) => setTimeout(r, 10));
  const die = dies.get(j.id);
  if (die !== undefined) exitToSucceeded.push(at('succeeded') - die);
}
const wall = (Date.now() - started) / 1000;

console.log(`runtime_jobs: ${jobsToRun} jobs`);
console.log(`runtime_lease_to_running_p50: ${pct(leaseToRunning, 0.5).toFixed(0)} ms`);
console.log(`runtime_lease_to_running_p99: ${pct(leaseToRunning, 0.99).toFixed(0)} ms`);
console.log(`runtime_exit_to_succeeded_p50: ${pct(exitToSucceeded, 0.5).toFixed(0)} ms`);
console.log(`runtime_exit_to_succeeded_p99: ${pct(exitToSucceeded, 0.99).toFixed(0)} ms`);
console.log(`runtime_echo_jobs_per_second: ${(jobsToRun / wall).toFixed(2)} jobs/s`);

// Log throughput: follow the job's log from submit, count lines until the end event.
const big = await client.post<Job>('/v1/jobs', spec(['seq', '1', String(logLines)]));
let lines = 0;
let lastLineAt = 0;
for (let attempt = 0; attempt < 50; attempt++) {
  const res = await fetch(new URL(`/v1/jobs/${big.id}/logs?follow=1`, c.url), { headers: { authorization: `Bearer ${clientKey}` } });
  const reader = res.body!.pipeThrough(new TextDecoderStream()).getReader();
  let buf = '';
  let done = false;
  while (!done) {
    const r = await reader.read();
    if (r.done) break;
    buf += r.value;
    let sep: number;
    while ((sep = buf.indexOf('\n\n')) >= 0) {
      const event = buf.slice(0, sep);
      buf = buf.slice(sep + 2);
      if (event.startsWith('event: end')) done = true;
      const data = /^data: (.*)$/m.exec(event)?.[1];
      if (event.startsWith('event: log') && data) {
        const chunk = JSON.parse(data) as { stream: string; text: string };
        if (chunk.stream === 'stdout') lines += chunk.text.split('\n').length - 1;
        lastLineAt = Date.now();
      }
    }
  }
  if (done) break;
}
const bigEnd = await ended(big.id);
const from = starts.get(big.id);
if (bigEnd.status !== 'succeeded' || lines !== logLines || from === undefined) {
  console.log(`runtime_log_throughput: failed (${bigEnd.status}, ${lines} of ${logLines} lines)`);
} else {
  console.log(`runtime_log_lines: ${logLines} lines`);
  console.log(`runtime_log_throughput: ${Math.round(logLines / ((lastLineAt - from) / 1000))} lines/s`);
}

(events as unknown as { destroy(): void }).destroy();
await agent.kill('SIGTERM');
// A run's volumes go right after its report; the agent may have stopped before the last went.
const { Volumes } = await engine.listVolumes({ filters: { label: [`io.gantry.node=${nodeId}`] } });
for (const v of Volumes ?? []) await engine.getVolume(v.Name).remove().catch(() => {});
await c.close();
await rm(work, { recursive: true, force: true });
