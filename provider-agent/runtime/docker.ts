import { existsSync } from 'node:fs';
import { chmod, mkdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { basename, join } from 'node:path';
import Docker from 'dockerode';
import { defaultAllowedRegistries } from '../../shared/images.ts';
import type { LeaseGrant, LeaseRef, ReportedUsage } from '../../shared/leases.ts';
import { InputError, prepareInputs } from '../inputs.ts';
import { defaultOutputsMaxBytes, saveOutputs } from '../outputs.ts';
import { writePrivateFile } from '../state.ts';
import { dockerOptionsFromEnv } from './docker-options.ts';
import { containerName, containerSpec, labels } from './docker-spec.ts';
import { demux, jsonLines, sinceParam, splitTimestamp, StreamDecoders, type OutputStream } from './engine-streams.ts';
import { defaultImageCacheMb, imageCacheIndex, ImageRefused, ImageStore } from './images.ts';
import { jobNetworkName, NetworkGuard } from './network.ts';
import { stopReason, type ExecutionContext, type ExecutionResult, type Executor, type RecoveredRun } from './executor.ts';
import { startWatchdog, stoppedByWatchdog, type DeadlineFile } from './watchdog.ts';

export interface RuntimeLogger {
  info(msg: string, fields?: Record<string, unknown>): void;
  warn(msg: string, fields?: Record<string, unknown>): void;
  error(msg: string, fields?: Record<string, unknown>): void;
}

export interface DockerRuntimeOptions {
  nodeId: string;
  /** Per-job folders (inputs, outputs, the grant) live under <workDir>/jobs/. */
  workDir: string;
  log: RuntimeLogger;
  /** Engine address; default DOCKER_HOST, else /var/run/docker.sock. */
  docker?: Docker.DockerOptions;
  /** Between SIGTERM and SIGKILL when a job is stopped (timeout, cancel). */
  stopGraceSeconds?: number;
  pidsLimit?: number;
  /** Cap on the packed /outputs (the coordinator has its own, GANTRY_OUTPUTS_MAX_BYTES). */
  outputsMaxBytes?: number;
  /** Leave containers that failed to start for inspection (debugging a GPU runtime). */
  keepFailedContainers?: boolean;
  /** Timeout of each short engine call (inspect, create, remove); streams have none. */
  apiTimeoutMs?: number;
  /** The registries jobs' images are pulled from (HOST[:PORT]); default: the public ones. */
  allowedRegistries?: readonly string[];
  /** The cap on the images the agent pulled, least recently used of ended jobs removed first. */
  imageCacheMb?: number;
  /** Run bridge jobs on Docker's default bridge where the isolation rules are not in force (the provider's own risk). */
  unisolatedBridge?: boolean;
  /**
   * How long after its lease's end a container's watchdog stops it when the agent has not (the
   * agent, when it runs, stops the job at the end itself). Default 2 s.
   */
  watchdogMarginMs?: number;
}

/** The engine's own words for a failure (its JSON message), not dockerode's wrapping. */
export function engineReason(err: unknown): string {
  const e = err as { json?: unknown; message?: string; reason?: string };
  let json = e?.json;
  if (Buffer.isBuffer(json)) json = json.toString('utf8');
  if (typeof json === 'string') {
    try {
      json = JSON.parse(json);
    } catch {
      return (json as string).trim() || String(e?.message ?? err);
    }
  }
  const message = (json as { message?: unknown } | null)?.message;
  if (typeof message === 'string' && message) return message.trim();
  return String(e?.message ?? err).replace(/^\(HTTP code \d+\)\s*[\w ]*-\s*/, '').trim();
}

const hostHasIpv6 = existsSync('/proc/sys/net/ipv6');
const statusOf = (err: unknown) => (err as { statusCode?: number })?.statusCode;
const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));


/** Whether an engine answers, and its version: what the agent reports at join. */
export async function probeDocker(opts: Docker.DockerOptions = dockerOptionsFromEnv()): Promise<{ ok: true; version: string; apiVersion: string } | { ok: false; why: string }> {
  const docker = new Docker({ ...opts, timeout: 5000 });
  try {
    const v = await docker.version();
    return { ok: true, version: v.Version, apiVersion: v.ApiVersion };
  } catch (err) {
    const where = process.env.DOCKER_HOST || '/var/run/docker.sock';
    return { ok: false, why: `no Docker engine answers at ${where} (${(err as NodeJS.ErrnoException).code ?? engineReason(err)})` };
  }
}

interface UsageSampler {
  stop(): Promise<ReportedUsage>;
}

/**
 * Leased jobs as containers through the Docker Engine API (DESIGN.md "Run"): the image present
 * or pulled, the container made from exactly what the lease grants and hardened, its output
 * followed from the engine's log with timestamps (so a restarted agent picks up where it was),
 * its usage sampled from the stats stream, its end read from the engine (exit code, OOM), its
 * /outputs packed and uploaded, and then the container removed.
 */
export class DockerRuntime implements Executor {
  readonly name = 'docker';
  private readonly api: Docker;
  private readonly streams: Docker;
  private readonly grace: number;
  private readonly images: ImageStore;
  private readonly network: NetworkGuard;
  /** Each run's lease end (local ms) as last renewed, by `jobId.epoch`. */
  private readonly deadlines = new Map<string, number>();
  /** Runs whose container has a watchdog reading their deadline file; each file's writes in order. */
  private readonly guarded = new Map<string, Promise<void>>();

  constructor(private readonly o: DockerRuntimeOptions) {
    const base = o.docker ?? dockerOptionsFromEnv();
    this.api = new Docker({ ...base, timeout: o.apiTimeoutMs ?? 30_000 });
    // Waits, logs, stats and pulls last as long as the job: no socket timeout on those.
    this.streams = new Docker({ ...base, timeout: undefined });
    this.grace = o.stopGraceSeconds ?? 10;
    this.images = new ImageStore({
      api: this.api,
      streams: this.streams,
      allowedRegistries: o.allowedRegistries ?? defaultAllowedRegistries,
      cacheMb: o.imageCacheMb ?? defaultImageCacheMb,
      indexFile: imageCacheIndex(o.workDir),
      log: o.log,
      engineReason,
    });
    this.network = new NetworkGuard(this.api);
  }

  private jobDir(jobId: string, epoch: number) {
    return join(this.o.workDir, 'jobs', `${jobId}.${epoch}`);
  }

  private deadlineFile(jobId: string, epoch: number) {
    return join(this.jobDir(jobId, epoch), 'lease-deadline.json');
  }

  leaseDeadline(lease: LeaseRef, deadlineMs: number): void {
    const key = `${lease.jobId}.${lease.epoch}`;
    this.deadlines.set(key, deadlineMs);
    if (this.guarded.has(key)) this.writeDeadline(lease);
  }

  /** The run's lease end into the file its watchdog reads, after any earlier write of it. */
  private writeDeadline(lease: LeaseRef): Promise<void> {
    const key = `${lease.jobId}.${lease.epoch}`;
    const write = async () => {
      const deadlineMs = this.deadlines.get(key);
      if (deadlineMs === undefined || !this.guarded.has(key)) return;
      const body: DeadlineFile = { deadlineMs };
      await writePrivateFile(this.deadlineFile(lease.jobId, lease.epoch), JSON.stringify(body)).catch((err) =>
        this.o.log.warn('could not write the lease deadline for the container watchdog', { jobId: lease.jobId, error: String((err as Error)?.message ?? err) }),
      );
    };
    const next = (this.guarded.get(key) ?? Promise.resolve()).then(write);
    this.guarded.set(key, next);
    return next;
  }

  /**
   * Gives the container a deadline that holds without the agent: its lease end on disk, and a
   * watchdog process (runtime/watchdog.ts) that stops it past that end unless the agent renewed it.
   */
  private async guard(grant: LeaseGrant, containerId: string): Promise<void> {
    const key = `${grant.jobId}.${grant.epoch}`;
    if (!this.deadlines.has(key)) this.deadlines.set(key, Date.now() + grant.expiresInMs);
    this.guarded.set(key, this.guarded.get(key) ?? Promise.resolve());
    await this.writeDeadline(grant);
    try {
      await startWatchdog(containerId, this.deadlineFile(grant.jobId, grant.epoch), this.grace, this.o.watchdogMarginMs ?? 2000);
    } catch (err) {
      this.o.log.warn('could not start the container watchdog: the job stops at its lease end only while the agent runs', { jobId: grant.jobId, error: String((err as Error)?.message ?? err) });
    }
  }

  async run(grant: LeaseGrant, ctx: ExecutionContext): Promise<ExecutionResult> {
    try {
      return await this.runContainer(grant, ctx);
    } finally {
      const key = `${grant.jobId}.${grant.epoch}`;
      if (!this.guarded.has(key)) this.deadlines.delete(key);
    }
  }

  private async runContainer(grant: LeaseGrant, ctx: ExecutionContext): Promise<ExecutionResult> {
    const name = containerName(grant.jobId, grant.epoch);
    const existing = await this.inspectByName(name);
    if (existing) {
      ctx.onProgress?.(`agent resumed following its container ${name}`);
      return this.follow(grant, ctx, existing, true);
    }
    if (ctx.signal.aborted) return { exitCode: null, reason: 'cancelled', error: 'stopped before it started' };

    let networkMode: string = 'none';
    if (grant.spec.network === 'bridge') {
      const isolation = await this.network.status();
      if (isolation.isolated) networkMode = jobNetworkName;
      else if (this.o.unisolatedBridge) networkMode = 'bridge';
      else {
        this.o.log.warn('bridge job refused: its network cannot be isolated here', { jobId: grant.jobId, why: isolation.why });
        return { exitCode: null, reason: 'error', error: 'network not allowed on this node: it takes only network: none jobs' };
      }
    }

    let imageId: string;
    try {
      imageId = await this.images.acquire(grant.spec.image, ctx);
    } catch (err) {
      if (ctx.signal.aborted) return { exitCode: null, reason: 'cancelled', error: 'stopped while its image was pulled' };
      // The client sees plain words; what the engine said stays in the provider's log.
      const why = err instanceof ImageRefused ? err.message : 'image could not be pulled';
      if (!(err instanceof ImageRefused)) this.o.log.warn('image not ready', { jobId: grant.jobId, image: grant.spec.image, error: engineReason(err) });
      ctx.onProgress?.(why);
      return { exitCode: null, reason: 'error', error: why };
    }
    try {
      return await this.start(grant, ctx, imageId, networkMode);
    } finally {
      await this.images.release(imageId);
    }
  }

  private async start(grant: LeaseGrant, ctx: ExecutionContext, imageId: string, networkMode: string): Promise<ExecutionResult> {
    const name = containerName(grant.jobId, grant.epoch);
    const dir = this.jobDir(grant.jobId, grant.epoch);

    const inputsDir = join(dir, 'inputs');
    const outputsDir = join(dir, 'outputs');
    try {
      await mkdir(dir, { recursive: true, mode: 0o700 });
      // What the runtime needs to pick this run up after an agent restart.
      await writeFile(join(dir, 'grant.json'), JSON.stringify(grant), { mode: 0o600 });
      await mkdir(outputsDir, { recursive: true });
      // Any user the image runs as may write its outputs; only this job's container mounts them.
      await chmod(outputsDir, 0o777);
      await chmod(dir, 0o711);
      await prepareInputs(grant.spec.inputs, inputsDir, ctx.fetchInput);
    } catch (err) {
      await rm(dir, { recursive: true, force: true }).catch(() => {});
      const why = err instanceof InputError ? err.message : `inputs could not be prepared: ${(err as Error).message}`;
      return { exitCode: null, reason: 'error', error: why };
    }
    if (ctx.signal.aborted) {
      await rm(dir, { recursive: true, force: true }).catch(() => {});
      return { exitCode: null, reason: 'cancelled', error: 'stopped before it started' };
    }

    const spec = containerSpec(grant, {
      nodeId: this.o.nodeId,
      imageId,
      inputsDir,
      outputsDir,
      networkMode,
      disableIpv6: hostHasIpv6,
      stopGraceSeconds: this.grace,
      ...(this.o.pidsLimit ? { pidsLimit: this.o.pidsLimit } : {}),
    });
    try {
      await this.api.createContainer(spec).catch((err) => {
        // An engine without docker-init: the same container without it.
        if (statusOf(err) === 409 || !/init/i.test(engineReason(err))) throw err;
        return this.api.createContainer({ ...spec, HostConfig: { ...spec.HostConfig, Init: false } });
      });
    } catch (err) {
      if (statusOf(err) !== 409) {
        await rm(dir, { recursive: true, force: true }).catch(() => {});
        return { exitCode: null, reason: 'error', error: `container could not be created: ${engineReason(err)}` };
      }
      // 409: a container of this name exists already (an earlier try of this very run): follow it.
    }
    const info = await this.inspectByName(name);
    if (!info) return { exitCode: null, reason: 'error', error: 'the container vanished right after it was created' };
    return this.follow(grant, ctx, info, false);
  }

  private async inspectByName(name: string): Promise<Docker.ContainerInspectInfo | null> {
    try {
      return await this.api.getContainer(name).inspect();
    } catch (err) {
      if (statusOf(err) === 404) return null;
      throw err;
    }
  }

  /** From a created or running (or already exited) container to the run's end. */
  private async follow(grant: LeaseGrant, ctx: ExecutionContext, info: Docker.ContainerInspectInfo, resumed: boolean): Promise<ExecutionResult> {
    const container = this.streams.getContainer(info.Id);
    const dir = this.jobDir(grant.jobId, grant.epoch);
    const cursorFile = join(dir, 'log-cursor');
    const outputsDir = join(dir, 'outputs');
    const fresh = info.State.Status === 'created';
    if (fresh || info.State.Running) await this.guard(grant, info.Id);

    let exited: Promise<{ StatusCode?: number; Error?: { Message?: string } | null }>;
    if (fresh) {
      // Before start: a plain wait here would answer at once with 0 (PITFALLS.md).
      exited = container.wait({ condition: 'next-exit' });
      try {
        await container.start();
      } catch (err) {
        exited.catch(() => {});
        const why = `container could not be started: ${engineReason(err)}`;
        this.o.log.warn('container start failed', { jobId: grant.jobId, error: engineReason(err) });
        if (!this.o.keepFailedContainers) await this.remove(info.Id, dir);
        return { exitCode: null, reason: 'error', error: why };
      }
    } else {
      exited = container.wait({ condition: 'not-running' });
    }
    exited.catch(() => {});
    ctx.onRunning();

    const startedAt = await this.startedAt(info.Id);
    let stoppedFor: 'timeout' | 'cancel' | 'detach' | null = null;
    let stopping: Promise<void> | null = null;
    const stop = (why: 'timeout' | 'cancel') => {
      if (stoppedFor) return;
      stoppedFor = why;
      stopping = this.stopContainer(info.Id);
    };

    const remainingMs = grant.spec.timeoutSeconds * 1000 - (Date.now() - startedAt);
    const timer = setTimeout(() => {
      if (stoppedFor) return;
      ctx.onProgress?.(`past its ${grant.spec.timeoutSeconds} s timeout: stopping it (SIGTERM, SIGKILL after ${this.grace} s)`);
      stop('timeout');
    }, Math.max(0, remainingMs));
    const detachment = new AbortController();
    const detached = new Promise<'detached'>((resolve) => detachment.signal.addEventListener('abort', () => resolve('detached'), { once: true }));
    const detach = () => detachment.abort();
    const onAbort = () => {
      if (stopReason(ctx.signal) === 'shutdown') {
        // The agent is going away, not the job: leave the container running for the next agent.
        stoppedFor = 'detach';
        detach();
        return;
      }
      ctx.onProgress?.(`stopping it: ${String(stopReason(ctx.signal))}`);
      stop('cancel');
    };
    if (ctx.signal.aborted) onAbort();
    else ctx.signal.addEventListener('abort', onAbort, { once: true });

    const sampler = this.sampleUsage(info.Id);
    const pump = this.pumpLogs(info.Id, ctx, cursorFile, resumed, detachment.signal, exited.catch(() => {}));
    try {
      const first = await Promise.race([exited.then(() => 'exited' as const, () => 'exited' as const), detached]);
      if (first === 'detached') {
        await Promise.race([pump, sleep(5000)]);
        await sampler.stop();
        return { exitCode: null, reason: 'cancelled', error: 'the agent stopped; the container runs on and the next agent resumes it' };
      }
      // Nothing runs any more: saving the outputs may outlast the lease (an outage) without cost.
      ctx.onExited?.();
      await stopping;
      // Every line the engine kept, then the figures.
      await Promise.race([pump, sleep(120_000)]);
      const usage = await sampler.stop();
      const end = await this.api.getContainer(info.Id).inspect();
      const result = this.outcome(grant, end, stoppedFor, usage);
      // A lease that is gone takes nothing more from this run: the coordinator would refuse it.
      const leaseGone = stopReason(ctx.signal) === 'lease-lost' || stopReason(ctx.signal) === 'lease-expired';
      if (!leaseGone) await saveOutputs(ctx, outputsDir, join(dir, 'outputs.tar'), this.o.outputsMaxBytes ?? defaultOutputsMaxBytes, (m, f) => this.o.log.warn(m, { jobId: grant.jobId, ...f }));
      await this.remove(info.Id, dir);
      return result;
    } finally {
      clearTimeout(timer);
      ctx.signal.removeEventListener('abort', onAbort);
    }
  }

  private async startedAt(id: string): Promise<number> {
    const s = (await this.api.getContainer(id).inspect()).State.StartedAt;
    const t = s ? Date.parse(s) : NaN;
    return Number.isFinite(t) && t > 0 ? t : Date.now();
  }

  private outcome(grant: LeaseGrant, end: Docker.ContainerInspectInfo, stoppedFor: string | null, usage: ReportedUsage): ExecutionResult {
    const code = end.State.ExitCode;
    const started = Date.parse(end.State.StartedAt);
    const finished = Date.parse(end.State.FinishedAt);
    if (Number.isFinite(started) && Number.isFinite(finished) && finished >= started) usage.wallSeconds = (finished - started) / 1000;
    const withUsage = (r: ExecutionResult): ExecutionResult => (Object.keys(usage).length ? { ...r, usage } : r);
    if (stoppedFor === 'timeout') return withUsage({ exitCode: code, reason: 'timeout', error: `stopped after its ${grant.spec.timeoutSeconds} s timeout` });
    if (stoppedFor === 'cancel') return withUsage({ exitCode: code, reason: 'cancelled', error: 'stopped: cancelled' });
    if (end.State.OOMKilled && code !== 0) {
      return withUsage({ exitCode: code, reason: 'oom', error: `killed for running out of memory (limit ${grant.memoryMb} MiB)` });
    }
    if (end.State.Error) return withUsage({ exitCode: code, reason: 'error', error: end.State.Error });
    if (code === 0) return withUsage({ exitCode: 0, reason: 'succeeded' });
    return withUsage({ exitCode: code, reason: 'nonzero-exit', error: `exited with code ${code}` });
  }

  /** SIGTERM, then SIGKILL after the grace (the engine's stop does both); a kill if stop fails. */
  private async stopContainer(id: string): Promise<void> {
    const c = this.streams.getContainer(id);
    try {
      await Promise.race([c.stop({ t: this.grace }), sleep((this.grace + 30) * 1000).then(() => Promise.reject(new Error('stop timed out')))]);
    } catch (err) {
      if (statusOf(err) === 304 || statusOf(err) === 404) return;
      await c.kill().catch(() => {});
    }
  }

  /**
   * The job's output from the engine's log (timestamps on, so a resumed follow starts after the
   * last line read), demultiplexed, decoded per stream, handed to onLog, waiting when it asks.
   * The engine may end a follow at the container's exit while the reader is behind (Docker 20.10
   * here stopped after 37,000 to 58,000 of 200,000 fast lines in about half the runs), so once
   * the container has exited the log is read again after the last line seen, until nothing more comes.
   */
  private async pumpLogs(
    id: string,
    ctx: ExecutionContext,
    cursorFile: string,
    resumed: boolean,
    detached: AbortSignal,
    exited: Promise<unknown>,
  ): Promise<void> {
    let last: string | null = resumed ? (await readFile(cursorFile, 'utf8').catch(() => '')).trim() || null : null;
    if (resumed) ctx.onProgress?.(last ? `output resumed after ${last} (lines around then may repeat or be missing)` : 'output resumed from the start');
    const decoders = new StreamDecoders();
    let saved = last;
    const save = async () => {
      if (last && last !== saved) {
        saved = last;
        await writeFile(cursorFile, last).catch(() => {});
      }
    };
    const saver = setInterval(() => void save(), 1000);
    saver.unref();
    let frames = 0;
    const readAfter = async (after: string | null) => {
      const stream = (await this.streams.getContainer(id).logs({
        follow: true,
        stdout: true,
        stderr: true,
        timestamps: true,
        ...(after ? { since: sinceParam(after) as unknown as number } : {}),
      })) as unknown as AsyncIterable<Buffer> & { destroy?: () => void };
      const cut = () => stream.destroy?.();
      if (detached.aborted) cut();
      detached.addEventListener('abort', cut, { once: true });
      try {
        for await (const frame of demux(stream)) {
          if (detached.aborted) break;
          const { ts, payload } = splitTimestamp(frame.data);
          if (after && ts && ts <= after) continue;
          frames++;
          const text = decoders.write(frame.stream, payload);
          if (text) {
            const wait = ctx.onLog(frame.stream, text);
            if (wait) await wait;
          }
          if (ts) last = ts;
        }
      } finally {
        detached.removeEventListener('abort', cut);
      }
    };
    try {
      await readAfter(last);
      if (!detached.aborted) await exited;
      // Read again after the last line seen until a pass finds nothing more (bounded).
      for (let pass = 0; pass < 10 && !detached.aborted; pass++) {
        const seen = frames;
        await readAfter(last);
        if (frames === seen) break;
        this.o.log.info('the engine ended a log follow early; read on after the last line', { container: id, pass: pass + 1, frames: frames - seen });
      }
    } catch (err) {
      if (!detached.aborted) this.o.log.warn('reading container output failed', { container: id, error: engineReason(err) });
    } finally {
      clearInterval(saver);
      // Detached: the next agent reads on from the saved cursor; a partial line stays for it.
      if (detached.aborted) return void (await save());
      for (const s of ['stdout', 'stderr'] as OutputStream[]) {
        const tail = decoders.end(s);
        if (tail) await ctx.onLog(s, tail);
      }
      await save();
    }
  }

  /** CPU seconds and peak memory from the engine's stats stream while the container runs. */
  private sampleUsage(id: string): UsageSampler {
    let cpuNs = 0;
    let maxMem = 0;
    let stream: (NodeJS.ReadableStream & { destroy?: () => void }) | null = null;
    let stopped = false;
    const reading = (async () => {
      try {
        stream = (await this.streams.getContainer(id).stats({ stream: true })) as unknown as NodeJS.ReadableStream & { destroy?: () => void };
        if (stopped) return stream.destroy?.();
        for await (const s of jsonLines(stream as AsyncIterable<Buffer>)) {
          const st = s as { cpu_stats?: { cpu_usage?: { total_usage?: number } }; memory_stats?: { usage?: number; max_usage?: number } };
          const cpu = st.cpu_stats?.cpu_usage?.total_usage ?? 0;
          if (cpu > cpuNs) cpuNs = cpu;
          const mem = Math.max(st.memory_stats?.max_usage ?? 0, st.memory_stats?.usage ?? 0);
          if (mem > maxMem) maxMem = mem;
        }
      } catch {
        /* no stats is no usage, not a failed job */
      }
    })();
    return {
      async stop() {
        stopped = true;
        // After the exit the engine goes on sending empty samples: the last real one is in hand.
        stream?.destroy?.();
        await Promise.race([reading, sleep(200)]);
        const usage: ReportedUsage = {};
        if (cpuNs > 0) usage.cpuSeconds = Math.round(cpuNs / 1e6) / 1000;
        if (maxMem > 0) usage.maxMemoryMb = Math.round((maxMem / (1024 * 1024)) * 10) / 10;
        return usage;
      },
    };
  }

  private async remove(id: string, dir: string): Promise<void> {
    // The watchdog goes with the folder; a deadline write still under way finishes first.
    const key = basename(dir);
    const writes = this.guarded.get(key);
    this.guarded.delete(key);
    this.deadlines.delete(key);
    await writes?.catch(() => {});
    await this.api
      .getContainer(id)
      .remove({ force: true, v: true })
      .catch((err) => {
        if (statusOf(err) !== 404) this.o.log.warn('container not removed', { container: id, error: engineReason(err) });
      });
    await rm(dir, { recursive: true, force: true }).catch(() => {});
  }

  async recover(): Promise<RecoveredRun[]> {
    const list = await this.api.listContainers({
      all: true,
      filters: { label: [`${labels.managed}=true`, `${labels.node}=${this.o.nodeId}`] },
    });
    const runs: RecoveredRun[] = [];
    for (const c of list) {
      const jobId = c.Labels[labels.job];
      const epoch = Number(c.Labels[labels.epoch]);
      if (!jobId || !Number.isInteger(epoch)) continue;
      let grant: LeaseGrant | null = null;
      try {
        grant = JSON.parse(await readFile(join(this.jobDir(jobId, epoch), 'grant.json'), 'utf8')) as LeaseGrant;
      } catch {
        grant = null;
      }
      const stoppedAtLeaseEnd = await stat(join(this.jobDir(jobId, epoch), stoppedByWatchdog)).then(() => true, () => false);
      runs.push({ jobId, epoch, grant, running: c.State === 'running', ...(stoppedAtLeaseEnd ? { stoppedAtLeaseEnd } : {}) });
    }
    return runs;
  }

  async discard(run: RecoveredRun): Promise<void> {
    const info = await this.inspectByName(containerName(run.jobId, run.epoch));
    if (info?.State.Running) await this.stopContainer(info.Id);
    this.o.log.info('removed a container whose lease is gone', { jobId: run.jobId, epoch: run.epoch });
    await this.remove(info?.Id ?? containerName(run.jobId, run.epoch), this.jobDir(run.jobId, run.epoch));
  }
}
