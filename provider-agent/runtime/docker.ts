import { createReadStream, existsSync } from 'node:fs';
import { mkdir, readdir, readFile, stat, writeFile } from 'node:fs/promises';
import { availableParallelism } from 'node:os';
import { basename, dirname, join } from 'node:path';
import Docker from 'dockerode';
import { backoffDelay } from '../../shared/backoff.ts';
import { defaultAllowedRegistries } from '../../shared/images.ts';
import { defaultDiskMb } from '../../shared/jobs.ts';
import type { LeaseGrant, LeaseRef, ReportedUsage } from '../../shared/leases.ts';
import { InputError, prepareInputs } from '../inputs.ts';
import { defaultOutputsMaxBytes, packOutputs, repackArchive, saveOutputs } from '../outputs.ts';
import { writePrivateFile } from '../state.ts';
import { dockerOptionsFromEnv } from './docker-options.ts';
import { containerName, containerSpec, defaultPidsLimit, labels, pidsShare, volumeName, type JobVolume } from './docker-spec.ts';
import { Helper, samplerScript, type HelperMount } from './helper.ts';
import { removeTree } from './tree.ts';
import { demux, jsonLines, sinceParam, splitTimestamp, StreamDecoders, type OutputStream } from './engine-streams.ts';
import { defaultImageCacheMb, imageCacheIndex, ImageRefused, ImageStore } from './images.ts';
import { jobNetworkName, NetworkGuard } from './network.ts';
import type { ServiceAddress } from '../tunnel/tunnel.ts';
import { stopReason, type ExecutionContext, type ExecutionResult, type Executor, type RecoveredRun } from './executor.ts';
import { deadlineFileName, stoppedByWatchdog, Watchdog, type DeadlineFile } from './watchdog.ts';

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
  /** The most processes (threads included) one job may have. */
  pidsLimit?: number;
  /** The most processes all jobs together may have: each job gets its CPU share of it. */
  pidsBudget?: number;
  /** How often what a job wrote is counted against its disk budget. */
  diskSampleSeconds?: number;
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

/** What the runtime needs of an image: its content id, its VOLUME paths, whether it runs as root. */
function describeImage(i: Docker.ImageInspectInfo): { id: string; volumes: string[]; rootUser: boolean } {
  const user = (i.Config?.User ?? '').split(':')[0] ?? '';
  return { id: i.Id, volumes: Object.keys(i.Config?.Volumes ?? {}), rootUser: user === '' || user === 'root' || user === '0' };
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
/** Inodes a job may use per MiB of its disk budget: ext4's default of one inode per 16 KiB. */
export const inodesPerMb = 64;

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
  /** Runs whose container the watchdog guards, by `jobId.epoch`: the container, and their deadline file's writes in order. */
  private readonly guarded = new Map<string, { containerId: string; writes: Promise<void> }>();
  private readonly helper: Helper;
  private readonly watchdog: Watchdog;

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
    this.helper = new Helper(this.streams, o.nodeId);
    this.watchdog = new Watchdog(o.workDir, this.grace, o.watchdogMarginMs ?? 2000);
  }

  private jobDir(jobId: string, epoch: number) {
    return join(this.o.workDir, 'jobs', `${jobId}.${epoch}`);
  }

  private deadlineFile(jobId: string, epoch: number) {
    return join(this.jobDir(jobId, epoch), deadlineFileName);
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
      const guarded = this.guarded.get(key);
      if (deadlineMs === undefined || !guarded) return;
      const body: DeadlineFile = { deadlineMs, containerId: guarded.containerId };
      await writePrivateFile(this.deadlineFile(lease.jobId, lease.epoch), JSON.stringify(body)).catch((err) =>
        this.o.log.warn('could not write the lease deadline for the container watchdog', { jobId: lease.jobId, error: String((err as Error)?.message ?? err) }),
      );
    };
    const guarded = this.guarded.get(key);
    if (!guarded) return Promise.resolve();
    guarded.writes = guarded.writes.then(write);
    return guarded.writes;
  }

  /**
   * Gives the container a deadline that holds without the agent: its lease end on disk, which the
   * agent's watchdog process (runtime/watchdog.ts) reads, stopping the container past that end
   * unless the agent renewed it.
   */
  private async guard(grant: LeaseGrant, containerId: string): Promise<void> {
    const key = `${grant.jobId}.${grant.epoch}`;
    if (!this.deadlines.has(key)) this.deadlines.set(key, Date.now() + grant.expiresInMs);
    const guarded = this.guarded.get(key);
    if (guarded) guarded.containerId = containerId;
    else this.guarded.set(key, { containerId, writes: Promise.resolve() });
    await this.writeDeadline(grant);
    await this.ensureWatchdog({ jobId: grant.jobId });
  }

  /** The watchdog runs (started once per agent, at its start or its first run; checked at every run). */
  private async ensureWatchdog(fields: Record<string, unknown> = {}): Promise<void> {
    try {
      await this.watchdog.ensure();
    } catch (err) {
      this.o.log.warn('could not start the container watchdog: jobs stop at their lease end only while the agent runs', { ...fields, error: String((err as Error)?.message ?? err) });
    }
  }

  async run(grant: LeaseGrant, ctx: ExecutionContext): Promise<ExecutionResult> {
    try {
      // No host path of the agent reaches the job's events or its error.
      const scrubbed: ExecutionContext = { ...ctx, onProgress: ctx.onProgress ? (m) => ctx.onProgress!(this.scrub(m)) : undefined };
      let result: ExecutionResult;
      try {
        result = await this.runContainer(grant, scrubbed);
      } catch (err) {
        throw new Error(this.scrub(engineReason(err)));
      }
      return result.error ? { ...result, error: this.scrub(result.error) } : result;
    } finally {
      const key = `${grant.jobId}.${grant.epoch}`;
      if (!this.guarded.has(key)) this.deadlines.delete(key);
    }
  }

  private scrub(message: string): string {
    return message.split(this.o.workDir).join('<agent work dir>');
  }

  private async runContainer(grant: LeaseGrant, ctx: ExecutionContext): Promise<ExecutionResult> {
    const name = containerName(grant.jobId, grant.epoch);
    // The image's digest is asked of its registry while the engine is asked for this run's container.
    const lookedUp = this.images.lookUp(grant.spec.image);
    lookedUp.catch(() => {});
    const existing = await this.inspectByName(name);
    if (existing) {
      ctx.onProgress?.(`agent resumed following its container ${name}`);
      return this.follow(grant, ctx, existing, true);
    }
    if (ctx.signal.aborted) return { exitCode: null, reason: 'cancelled', error: 'stopped before it started' };
    const dir = this.jobDir(grant.jobId, grant.epoch);

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

    // The run's folder and its /outputs volume are made while the image is looked up.
    const outputsVolume = volumeName(grant.jobId, grant.epoch, 'outputs');
    const prepared = Promise.all([
      this.createVolume(outputsVolume, grant),
      (async () => {
        await mkdir(dir, { recursive: true, mode: 0o700 });
        // What the runtime needs to pick this run up after an agent restart.
        await writeFile(join(dir, 'grant.json'), JSON.stringify(grant), { mode: 0o600 });
      })(),
    ]);
    prepared.catch(() => {});
    let volumes: JobVolume[] = [{ name: outputsVolume, target: '/outputs', readOnly: false }];
    // A run that never started: its folder goes now, its volumes after the report, like any run's.
    const forget = async (r: ExecutionResult): Promise<ExecutionResult> => {
      await prepared.catch(() => {});
      await this.removeRun(null, grant.jobId, grant.epoch, []);
      const names = volumes.map((v) => v.name);
      return { ...r, cleanup: () => this.removeVolumes(names, grant.jobId) };
    };

    let image: { id: string; volumes: string[]; rootUser: boolean };
    try {
      image = describeImage(await this.images.acquire(grant.spec.image, ctx, lookedUp));
    } catch (err) {
      if (ctx.signal.aborted) return forget({ exitCode: null, reason: 'cancelled', error: 'stopped while its image was pulled' });
      // The client sees plain words; what the engine said stays in the provider's log.
      const why = err instanceof ImageRefused ? err.message : 'image could not be pulled';
      if (!(err instanceof ImageRefused)) this.o.log.warn('image not ready', { jobId: grant.jobId, image: grant.spec.image, error: engineReason(err) });
      ctx.onProgress?.(why);
      return forget({ exitCode: null, reason: 'error', error: why });
    }
    try {
      return await this.startOn(grant, ctx, image, networkMode, { dir, name, prepared, outputsVolume, forget, setVolumes: (v) => (volumes = v) });
    } finally {
      await this.images.release(image.id);
    }
  }

  /** From the image in hand to the container's end: its volumes and inputs, the container, then follow(). */
  private async startOn(
    grant: LeaseGrant,
    ctx: ExecutionContext,
    image: { id: string; volumes: string[]; rootUser: boolean },
    networkMode: string,
    run: { dir: string; name: string; prepared: Promise<unknown>; outputsVolume: string; forget: (r: ExecutionResult) => Promise<ExecutionResult>; setVolumes: (v: JobVolume[]) => void },
  ): Promise<ExecutionResult> {
    const { dir, name, prepared, outputsVolume, forget } = run;
    const volumes = this.jobVolumes(grant, image.volumes);
    run.setVolumes(volumes);
    try {
      await prepared;
      await Promise.all(volumes.filter((v) => v.name !== outputsVolume).map((v) => this.createVolume(v.name, grant)));
      if (grant.spec.inputs?.length) await this.fillInputs(grant, dir, volumes.find((v) => v.target === '/inputs')!.name, ctx);
      // A job that runs as another user than root may write its outputs too.
      if (!image.rootUser) await this.helper.run('chmod 0777 /v/0', [{ source: volumes[0]!.name, target: '/v/0', readOnly: false }], [], 'outputs');
    } catch (err) {
      const why = err instanceof InputError ? err.message : `its volumes and inputs could not be prepared: ${engineReason(err)}`;
      return forget({ exitCode: null, reason: 'error', error: why });
    }
    if (ctx.signal.aborted) return forget({ exitCode: null, reason: 'cancelled', error: 'stopped before it started' });

    const pidsCap = this.o.pidsLimit ?? defaultPidsLimit;
    const spec = containerSpec(grant, {
      nodeId: this.o.nodeId,
      imageId: image.id,
      volumes,
      networkMode,
      disableIpv6: hostHasIpv6,
      stopGraceSeconds: this.grace,
      pidsLimit: this.o.pidsBudget ? pidsShare(this.o.pidsBudget, grant.cpuMillis, availableParallelism() * 1000, pidsCap) : pidsCap,
    });
    try {
      await this.api.createContainer(spec).catch((err) => {
        // An engine without docker-init: the same container without it.
        if (statusOf(err) === 409 || !/init/i.test(engineReason(err))) throw err;
        return this.api.createContainer({ ...spec, HostConfig: { ...spec.HostConfig, Init: false } });
      });
    } catch (err) {
      if (statusOf(err) !== 409) {
        return forget({ exitCode: null, reason: 'error', error: `container could not be created: ${engineReason(err)}` });
      }
      // 409: a container of this name exists already (an earlier try of this very run): follow it.
    }
    const info = await this.inspectByName(name);
    if (!info) return forget({ exitCode: null, reason: 'error', error: 'the container vanished right after it was created' });
    return this.follow(grant, ctx, info, false);
  }

  /** /outputs first (the helper counts it as /v/0), then /inputs, then the image's own VOLUME paths. */
  private jobVolumes(grant: LeaseGrant, imageVolumes: string[]): JobVolume[] {
    const v = (what: string, target: string, readOnly: boolean): JobVolume => ({ name: volumeName(grant.jobId, grant.epoch, what), target, readOnly });
    const own = imageVolumes.filter((p) => p !== '/outputs' && p !== '/inputs').sort();
    return [
      v('outputs', '/outputs', false),
      ...(grant.spec.inputs?.length ? [v('inputs', '/inputs', true)] : []),
      ...own.map((target, i) => v(`vol${i}`, target, false)),
    ];
  }

  private async createVolume(name: string, grant: LeaseGrant): Promise<void> {
    await this.api.createVolume({
      Name: name,
      Labels: { [labels.managed]: 'true', [labels.node]: this.o.nodeId, [labels.job]: grant.jobId, [labels.epoch]: String(grant.epoch) },
    });
  }

  /** Inputs fetched into a folder of the agent's, then copied into the job's /inputs volume through the engine. */
  private async fillInputs(grant: LeaseGrant, dir: string, volume: string, ctx: ExecutionContext): Promise<void> {
    const staged = join(dir, 'inputs');
    const tarFile = join(dir, 'inputs.tar');
    try {
      await prepareInputs(grant.spec.inputs, staged, ctx.fetchInput);
      await packOutputs(staged, tarFile, Number.MAX_SAFE_INTEGER);
      const c = await this.helper.create('true', [{ source: volume, target: '/in', readOnly: false }], [], 'inputs');
      try {
        await c.putArchive(createReadStream(tarFile) as unknown as NodeJS.ReadableStream, { path: '/in' });
      } finally {
        await c.remove({ force: true }).catch(() => {});
      }
    } finally {
      await removeTree(staged).catch(() => {});
      await removeTree(tarFile).catch(() => {});
    }
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
    const volumeNames = (info.Mounts ?? []).filter((m) => m.Type === 'volume' && m.Name).map((m) => m.Name!);
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
        if (this.o.keepFailedContainers) return { exitCode: null, reason: 'error', error: why };
        await this.removeRun(info.Id, grant.jobId, grant.epoch, []);
        return { exitCode: null, reason: 'error', error: why, cleanup: () => this.removeVolumes(volumeNames, grant.jobId) };
      }
    } else {
      exited = container.wait({ condition: 'not-running' });
    }
    exited.catch(() => {});
    ctx.onRunning(grant.spec.service ? await this.serviceAddress(info.Id, grant.spec.service.port) : undefined);

    const startedAt = await this.startedAt(info.Id);
    let stoppedFor: 'timeout' | 'cancel' | 'disk' | 'detach' | null = null;
    let stopping: Promise<void> | null = null;
    const stop = (why: 'timeout' | 'cancel' | 'disk') => {
      if (stoppedFor) return;
      stoppedFor = why;
      // Over its disk budget a job gets no grace to write more.
      stopping = why === 'disk' ? this.killContainer(info.Id) : this.stopContainer(info.Id);
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
    const diskMb = grant.spec.resources.diskMb ?? defaultDiskMb;
    const disk = this.watchDisk(grant, info, diskMb, (bytes, inodes) => {
      if (stoppedFor) return;
      ctx.onProgress?.(`wrote ${(bytes / 2 ** 20).toFixed(1)} MiB in ${inodes} files and folders, over its disk budget of ${diskMb} MiB (${diskMb * inodesPerMb} files): stopping it`);
      stop('disk');
    }, () => ctx.onProgress?.('its disk use can no longer be counted on this node: its disk budget is not enforced'));
    const pump = this.pumpLogs(info.Id, ctx, cursorFile, resumed, detachment.signal, exited.catch(() => {}));
    try {
      const first = await Promise.race([exited.then(() => 'exited' as const, () => 'exited' as const), detached]);
      if (first === 'detached') {
        await Promise.race([pump, sleep(5000)]);
        await sampler.stop();
        await disk.stop();
        return { exitCode: null, reason: 'cancelled', error: 'the agent stopped; the container runs on and the next agent resumes it' };
      }
      // Nothing runs any more: saving the outputs may outlast the lease (an outage) without cost.
      ctx.onExited?.();
      await stopping;
      const leaseGone = () => stopReason(ctx.signal) === 'lease-lost' || stopReason(ctx.signal) === 'lease-expired';
      // /outputs is read through the engine (one archive call) while the last output is drained
      // and the end read; over its disk budget, what it wrote is not read back (that would take as
      // long again as writing it), and a lease that is gone takes nothing more from this run.
      const maxBytes = this.o.outputsMaxBytes ?? defaultOutputsMaxBytes;
      const unread = new AbortController();
      const reading = stoppedFor === 'disk' || leaseGone() ? null : this.readOutputs(info.Id, join(dir, 'outputs.tar'), maxBytes, disk, ctx, unread.signal);
      reading?.catch(() => {});
      // Every line the engine kept, then the figures.
      await Promise.race([pump, sleep(120_000)]);
      ctx.onOutputEnd?.();
      const usage = await sampler.stop();
      const end = await this.api.getContainer(info.Id).inspect();
      const result = this.outcome(grant, end, stoppedFor, usage);
      if (stoppedFor === 'disk') ctx.onProgress?.('outputs not kept: the job went over its disk budget');
      if (reading && (stoppedFor === 'disk' || leaseGone())) {
        unread.abort();
        await reading.catch(() => {});
      } else if (reading) {
        await saveOutputs(ctx, () => reading, maxBytes, (m, f) => this.o.log.warn(m, { jobId: grant.jobId, ...f }));
      }
      await this.removeRun(info.Id, grant.jobId, grant.epoch, []);
      return { ...result, cleanup: () => disk.stop().then(() => this.removeVolumes(volumeNames, grant.jobId)) };
    } finally {
      clearTimeout(timer);
      ctx.signal.removeEventListener('abort', onAbort);
    }
  }

  /** Where a service job answers inside the node: its container's address on its own network (never a host port). */
  private async serviceAddress(id: string, port: number): Promise<ServiceAddress | undefined> {
    const networks = (await this.api.getContainer(id).inspect().catch(() => null))?.NetworkSettings?.Networks ?? {};
    const ip = Object.values(networks).find((n) => n?.IPAddress)?.IPAddress;
    return ip ? { host: ip, port } : undefined;
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
    if (stoppedFor === 'disk') {
      const mb = grant.spec.resources.diskMb ?? defaultDiskMb;
      return withUsage({ exitCode: code, reason: 'disk', error: `stopped for writing more than its disk budget of ${mb} MiB` });
    }
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

  /**
   * Counts what the job can write (its writable volumes, in a helper that mounts them
   * read-only) every few seconds, and calls onOver once the count passes its disk budget:
   * allocated bytes over diskMb MiB, or inodes over inodesPerMb per MiB.
   */
  private watchDisk(
    grant: LeaseGrant,
    info: Docker.ContainerInspectInfo,
    diskMb: number,
    onOver: (bytes: number, inodes: number) => void,
    onLost: () => void,
  ): DiskWatch {
    const writable = (info.Mounts ?? []).filter((m) => m.Type === 'volume' && m.RW && m.Name);
    // /outputs is /v/0: what the end of the run counts against the archive read back.
    writable.sort((a, b) => Number(b.Destination === '/outputs') - Number(a.Destination === '/outputs'));
    const mounts: HelperMount[] = writable.map((m, i) => ({ source: m.Name!, target: `/v/${i}`, readOnly: true }));
    const limitBytes = diskMb * 2 ** 20;
    const limitInodes = diskMb * inodesPerMb;
    let container: Docker.Container | null = null;
    let logs: { destroy?: () => void } | null = null;
    let stopped = false;
    const fields = { jobId: grant.jobId, epoch: grant.epoch };
    const watching = (async () => {
      if (!mounts.length) return;
      // A job that ends within its first second needs no counter (nor the engine's time to start one).
      await sleep(1000);
      if (stopped) return;
      const c = await this.helper.create(samplerScript(this.o.diskSampleSeconds ?? 2), mounts, ['DAC_READ_SEARCH'], `disk ${grant.jobId}.${grant.epoch}`);
      container = c;
      if (stopped) return void (await c.remove({ force: true }).catch(() => {}));
      await c.start();
      const stream = (await c.logs({ follow: true, stdout: true, stderr: true })) as unknown as AsyncIterable<Buffer> & { destroy?: () => void };
      logs = stream;
      if (stopped) return stream.destroy?.();
      let rest = '';
      for await (const f of demux(stream)) {
        if (f.stream !== 'stdout') continue;
        rest += f.data.toString('utf8');
        let nl: number;
        while ((nl = rest.indexOf('\n')) >= 0) {
          const [bytes, inodes] = rest.slice(0, nl).trim().split(' ').map(Number) as [number, number];
          rest = rest.slice(nl + 1);
          if (bytes > limitBytes || inodes > limitInodes) onOver(bytes, inodes);
        }
      }
      if (!stopped) {
        this.o.log.warn('the disk counter of a job stopped', fields);
        onLost();
      }
    })().catch((err) => {
      if (!stopped) {
        this.o.log.warn('disk use of a job cannot be counted', { ...fields, error: engineReason(err) });
        onLost();
      }
    });
    return {
      count: async () => {
        if (!mounts.length) return null;
        const script = 'find /v/0 -xdev | wc -l';
        let out: string;
        const running = container as Docker.Container | null;
        if (running && logs) {
          const exec = await running.exec({ Cmd: ['/bin/sh', '-c', script], AttachStdout: true, AttachStderr: true });
          const stream = (await exec.start({ hijack: true, stdin: false })) as unknown as AsyncIterable<Buffer>;
          out = '';
          for await (const f of demux(stream)) if (f.stream === 'stdout') out += f.data.toString('utf8');
        } else {
          out = await this.helper.run(script, [mounts[0]!], ['DAC_READ_SEARCH'], 'count');
        }
        const n = Number(out.trim());
        return Number.isInteger(n) && n > 0 ? n : null;
      },
      stop: async () => {
        stopped = true;
        logs?.destroy?.();
        await Promise.race([watching, sleep(2000)]);
        // Removing the helper also unmounts the volumes it holds, so they can be removed.
        await (container as Docker.Container | null)?.remove({ force: true }).catch(() => {});
      },
    };
  }

  /**
   * /outputs of the stopped container through the engine's archive (links resolve in the
   * container's root, never on the host), repacked; entries the archive left out (it skips
   * paths past PATH_MAX without an error) are counted against what the job wrote and reported.
   */
  private async readOutputs(id: string, tarFile: string, maxBytes: number, disk: DiskWatch, ctx: ExecutionContext, signal: AbortSignal) {
    const archive = (await this.streams.getContainer(id).getArchive({ path: '/outputs' })) as unknown as AsyncIterable<Buffer> & { destroy?: (err?: Error) => void };
    const cut = () => archive.destroy?.(new Error('outputs not read'));
    if (signal.aborted) cut();
    signal.addEventListener('abort', cut, { once: true });
    let read: Awaited<ReturnType<typeof repackArchive>>;
    try {
      read = await repackArchive(archive, tarFile, maxBytes);
    } finally {
      signal.removeEventListener('abort', cut);
    }
    // The first entry left out has a parent read back within a name (255) of PATH_MAX, counting
    // the volume's own path on the host: only then is there anything to count.
    if (read.deepestFolder < 4096 - 255 - 512) return read;
    const written = await disk.count().catch(() => null);
    if (written !== null && written > read.entries) {
      ctx.onProgress?.(
        `${written - read.entries} of the ${written} files and folders in /outputs could not be read back (deeper than the engine's path limit, or sockets): left out of its outputs`,
      );
    }
    return read;
  }

  /** SIGKILL at once. */
  private async killContainer(id: string): Promise<void> {
    await this.streams
      .getContainer(id)
      .kill()
      .catch((err) => {
        if (statusOf(err) !== 404 && statusOf(err) !== 409 && statusOf(err) !== 304) throw err;
      })
      .catch(() => this.stopContainer(id));
  }

  /** The container and the run's folder on this host, and any volumes named (those only when the run never started). */
  private async removeRun(containerId: string | null, jobId: string, epoch: number, volumes: string[]): Promise<void> {
    // The deadline goes with the folder (the watchdog forgets the run); a write of it still under way finishes first.
    const key = `${jobId}.${epoch}`;
    const writes = this.guarded.get(key)?.writes;
    this.guarded.delete(key);
    this.deadlines.delete(key);
    await writes?.catch(() => {});
    if (containerId) {
      await this.api
        .getContainer(containerId)
        .remove({ force: true, v: true })
        .catch((err) => {
          if (statusOf(err) !== 404) this.o.log.warn('container not removed', { jobId, container: containerId, error: engineReason(err) });
        });
    }
    await this.removeFolder(this.jobDir(jobId, epoch)).catch((err) =>
      this.o.log.warn('job folder not removed; the agent sweeps it at its next start', { jobId, error: (err as Error).message }),
    );
    if (volumes.length) await this.removeVolumes(volumes, jobId);
  }

  /** A folder of the agent's, whatever a job left in it: as this user, else through a helper running as root. */
  private async removeFolder(dir: string): Promise<void> {
    try {
      await removeTree(dir);
    } catch {
      await this.helper.run(`rm -rf -- "/w/${basename(dir)}"`, [{ source: dirname(dir), target: '/w', readOnly: false }], ['DAC_OVERRIDE', 'FOWNER'], 'remove');
    }
  }

  /** The engine removes a volume however deep or long-named its files are; tried again a few times, each failure logged. */
  private async removeVolumes(names: string[], jobId: string): Promise<void> {
    for (const name of names) {
      for (let attempt = 1; ; attempt++) {
        try {
          await this.streams.getVolume(name).remove();
          break;
        } catch (err) {
          if (statusOf(err) === 404) break;
          this.o.log.warn('volume not removed', { jobId, volume: name, attempt, error: engineReason(err) });
          if (attempt >= 4) break;
          await sleep(backoffDelay(attempt, { initialMs: 2000, maxMs: 32_000, factor: 4 }));
        }
      }
    }
  }

  async recover(): Promise<RecoveredRun[]> {
    // At the agent's start: the containers an earlier agent left are guarded again at once, and no lease waits for the watchdog to start.
    await mkdir(join(this.o.workDir, 'jobs'), { recursive: true, mode: 0o700 }).catch(() => {});
    await this.ensureWatchdog();
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
    await this.sweep(new Set(runs.map((r) => `${r.jobId}.${r.epoch}`))).catch((err) =>
      this.o.log.warn('could not sweep what ended jobs left', { error: engineReason(err) }),
    );
    return runs;
  }

  /** At start: helpers, volumes and folders of runs that have no container any more (a cleanup cut short). */
  private async sweep(held: Set<string>): Promise<void> {
    await this.helper.sweep();
    const { Volumes } = await this.api.listVolumes({ filters: { label: [`${labels.managed}=true`, `${labels.node}=${this.o.nodeId}`] } });
    const leftVolumes = (Volumes ?? []).filter((v) => !held.has(`${v.Labels?.[labels.job]}.${v.Labels?.[labels.epoch]}`)).map((v) => v.Name);
    const folders = await readdir(join(this.o.workDir, 'jobs')).catch(() => [] as string[]);
    const leftFolders = folders.filter((f) => !held.has(f));
    if (!leftVolumes.length && !leftFolders.length) return;
    this.o.log.info('removing what ended jobs left', { volumes: leftVolumes.length, folders: leftFolders.length });
    for (const f of leftFolders) {
      await this.removeFolder(join(this.o.workDir, 'jobs', f)).catch((err) => this.o.log.warn('job folder not removed', { folder: f, error: (err as Error).message }));
    }
    await this.removeVolumes(leftVolumes, 'sweep');
  }

  async discard(run: RecoveredRun): Promise<void> {
    const info = await this.inspectByName(containerName(run.jobId, run.epoch));
    if (info?.State.Running) await this.stopContainer(info.Id);
    this.o.log.info('removed a container whose lease is gone', { jobId: run.jobId, epoch: run.epoch });
    const volumes = (info?.Mounts ?? []).filter((m) => m.Type === 'volume' && m.Name).map((m) => m.Name!);
    await this.removeRun(info?.Id ?? null, run.jobId, run.epoch, volumes);
  }
}

interface DiskWatch {
  /** How many files and folders /outputs holds, counted by the helper (null when it cannot say). */
  count(): Promise<number | null>;
  stop(): Promise<void>;
}
