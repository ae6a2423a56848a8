import { freemem, loadavg, totalmem } from 'node:os';
import { backoffDelay } from '../shared/backoff.ts';
import { ApiRequestError, type ApiClient } from '../shared/client.ts';
import type { HardwareReport, MetricsSample } from '../shared/hardware.ts';
import type { LeaseRef } from '../shared/leases.ts';
import { HeartbeatAnswer, type HeartbeatInput } from '../shared/nodes.ts';

export type AnswerHandler = (answer: HeartbeatAnswer, sentAtMs: number) => void | Promise<void>;

export type LinkState = 'starting' | 'connected' | 'unreachable' | 'refused';

export interface HeartbeatOptions {
  client: ApiClient;
  /** Time between heartbeats while the coordinator answers (default 5 s). */
  intervalMs?: number;
  /** How often the full inventory runs again to catch hardware changes (default 60 s). */
  hardwareEveryMs?: number;
  /** The longest wait between tries while the coordinator is down (default 60 s). */
  maxBackoffMs?: number;
  detectHardware: () => Promise<HardwareReport>;
  sampleMetrics: (onWarning: (warning: string) => void) => Promise<MetricsSample>;
  /** The inventory join just took, so the first heartbeat need not wait for another. */
  initialHardware?: HardwareReport;
  /** The jobs this node holds, at the epoch it holds each with: the lease runner's answer. */
  heldJobs?: () => LeaseRef[];
  /** Each heartbeat answer (renewed leases, cancellations), with the local time the heartbeat left: for the lease runner. */
  onAnswer?: AnswerHandler;
  log: (line: string) => void;
  agentVersion?: string;
  random?: () => number;
}

/** What counts as a hardware change: not the free disk, which moves all the time. */
function hardwareDigest(r: HardwareReport): string {
  const { diskFreeMb: _disk, ...host } = r.host;
  return JSON.stringify({ host, gpus: r.gpus });
}

/** The least time between detections that a GPU count differing in the metrics sets off. */
const mismatchDetectEveryMs = 15_000;

const physicalGpus = (r: HardwareReport) => new Set(r.gpus.map((g) => g.uuid)).size;

/** A sample of the host alone, for when the metrics call itself failed: liveness matters more. */
function hostOnlySample(): MetricsSample {
  return {
    at: new Date().toISOString(),
    host: { loadAvg1: loadavg()[0] ?? 0, memoryUsedMb: Math.round((totalmem() - freemem()) / 1_048_576) },
    gpus: [],
  };
}

/**
 * The agent's heartbeat loop: every few seconds, liveness, the live metrics, the jobs it holds,
 * and the hardware when it changed. While the coordinator is down it retries with exponential
 * backoff and jitter, and it logs one line per change of state, never one per failed try.
 */
export class HeartbeatLoop {
  private readonly intervalMs: number;
  private readonly hardwareEveryMs: number;
  private readonly maxBackoffMs: number;
  /** The last failure's Retry-After, when it had one. */
  private retryAfterMs: number | null = null;
  private readonly random: () => number;
  private heldJobs: () => LeaseRef[];
  private takesWork: () => boolean = () => true;
  private answerHandler: AnswerHandler | undefined;

  private state: LinkState = 'starting';
  private stateDetail = '';
  private failures = 0;
  private downSince = 0;
  private stopped = false;
  private wake: (() => void) | null = null;
  private inFlight: AbortController | null = null;
  private running: Promise<void> | null = null;

  /** The inventory the coordinator should have (last taken, or about to be sent). */
  private confirmed: HardwareReport | null = null;
  /** An inventory to send with the next heartbeat. */
  private pending: HardwareReport | null = null;
  /** A detection that lost GPUs, waiting to be seen a second time before it is believed. */
  private suspectDigest: string | null = null;
  private detecting: Promise<void> | null = null;
  private nextDetectAt = 0;
  private nextMismatchDetectAt = 0;
  private warnings = new Set<string>();
  private lastSampleWarning = '';
  private beats = 0;

  constructor(private opts: HeartbeatOptions) {
    this.intervalMs = opts.intervalMs ?? 5_000;
    this.hardwareEveryMs = opts.hardwareEveryMs ?? 60_000;
    this.maxBackoffMs = Math.max(opts.maxBackoffMs ?? 60_000, this.intervalMs);
    this.random = opts.random ?? Math.random;
    this.heldJobs = opts.heldJobs ?? (() => []);
    this.answerHandler = opts.onAnswer;
  }

  /** Where the held jobs come from (the lease runner), when it is wired after construction. */
  supplyHeldJobs(fn: () => LeaseRef[]): void {
    this.heldJobs = fn;
  }

  /** Whether this agent can run jobs (it has a runtime): sent with every heartbeat. */
  supplyTakesWork(fn: () => boolean): void {
    this.takesWork = fn;
  }

  /** Who receives each heartbeat answer (the lease runner), when it is wired after construction. */
  onAnswer(fn: AnswerHandler): void {
    this.answerHandler = fn;
  }

  get linkState(): LinkState {
    return this.state;
  }

  /** Heartbeats the coordinator has taken so far. */
  get heartbeatsTaken(): number {
    return this.beats;
  }

  /** Starts the loop; resolves once it has stopped. */
  start(): Promise<void> {
    this.running ??= this.loop();
    return this.running;
  }

  /** Sends the next heartbeat now instead of at its time (say, a job just ended). */
  poke(): void {
    this.wake?.();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.inFlight?.abort();
    this.wake?.();
    await this.running;
    await this.detecting;
  }

  private async loop(): Promise<void> {
    if (this.opts.initialHardware) this.take(this.opts.initialHardware);
    else await this.detect();
    this.nextDetectAt = Date.now() + this.hardwareEveryMs;
    while (!this.stopped) {
      const started = Date.now();
      const ok = await this.beat();
      if (this.stopped) break;
      const wait = ok ? Math.max(0, this.intervalMs - (Date.now() - started)) : this.backoffMs();
      await this.sleep(wait);
    }
  }

  private backoffMs(): number {
    // A coordinator that answers 503 with Retry-After (its database is away) is asked again then,
    // not after a backoff grown over the outage: the node must be heard soon after the database returns.
    const delay = backoffDelay(this.failures, { initialMs: this.intervalMs, maxMs: this.maxBackoffMs, random: this.random });
    return Math.min(delay, this.retryAfterMs ?? Number.POSITIVE_INFINITY);
  }

  private sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const timer = setTimeout(done, ms);
      function done() {
        clearTimeout(timer);
        resolve();
      }
      this.wake = () => {
        this.wake = null;
        done();
      };
    });
  }

  private async sample(): Promise<MetricsSample> {
    let warning = '';
    let sample: MetricsSample;
    try {
      sample = await this.opts.sampleMetrics((w) => (warning ||= w));
    } catch (err) {
      warning = `metrics sample failed: ${(err as Error).message}`;
      sample = hostOnlySample();
    }
    if (warning !== this.lastSampleWarning) {
      this.opts.log(warning ? `GPU metrics unavailable: ${warning}` : 'GPU metrics available again');
      this.lastSampleWarning = warning;
    }
    return sample;
  }

  private async beat(): Promise<boolean> {
    const metrics = await this.sample();
    const sampledGpus = new Set(metrics.gpus.map((g) => g.id)).size;
    const now = Date.now();
    const mismatch = this.confirmed !== null && sampledGpus !== physicalGpus(this.confirmed) && now >= this.nextMismatchDetectAt;
    if (mismatch || now >= this.nextDetectAt) {
      // A sample that counts other GPUs than the inventory is worth a look, but not every beat.
      this.nextMismatchDetectAt = now + mismatchDetectEveryMs;
      this.detectInBackground();
    }
    const hardware = this.pending;
    const body: HeartbeatInput = {
      jobs: this.heldJobs(),
      metrics,
      ...(hardware ? { hardware } : {}),
      ...(this.opts.agentVersion ? { agentVersion: this.opts.agentVersion } : {}),
      takesWork: this.takesWork(),
    };
    this.inFlight = new AbortController();
    const sentAtMs = Date.now();
    let answer: HeartbeatAnswer;
    try {
      answer = await this.opts.client.request('POST', '/v1/agent/heartbeat', body, HeartbeatAnswer, {
        signal: this.inFlight.signal,
        timeoutMs: Math.min(30_000, Math.max(5_000, this.intervalMs * 2)),
      });
    } catch (err) {
      if (!this.stopped) this.failed(err);
      return false;
    } finally {
      this.inFlight = null;
    }
    this.beats++;
    if (hardware && this.pending === hardware) this.pending = null;
    if (answer.hardwareWanted && this.confirmed) this.pending = this.confirmed;
    for (const w of answer.warnings) {
      if (!this.warnings.has(w)) this.opts.log(`coordinator: ${w}`);
    }
    this.warnings = new Set(answer.warnings);
    this.connected();
    try {
      await this.answerHandler?.(answer, sentAtMs);
    } catch (err) {
      this.opts.log(`heartbeat answer handler failed: ${(err as Error).message}`);
    }
    return true;
  }

  private connected() {
    if (this.state === 'connected') return;
    const url = this.opts.client.opts.baseUrl;
    if (this.state === 'starting') this.opts.log(`connected to the coordinator at ${url}`);
    else {
      const downS = Math.round((Date.now() - this.downSince) / 1000);
      this.opts.log(`reconnected to the coordinator after ${this.failures} failed tries (${downS} s)`);
    }
    this.state = 'connected';
    this.stateDetail = '';
    this.failures = 0;
  }

  private failed(err: unknown) {
    if (this.failures === 0) this.downSince = Date.now();
    this.retryAfterMs = err instanceof ApiRequestError && err.retryAfterSeconds !== null ? Math.max(this.intervalMs, err.retryAfterSeconds * 1000) : null;
    this.failures++;
    let next: LinkState;
    let detail: string;
    if (err instanceof ApiRequestError && err.status < 500 && err.status !== 429) {
      next = 'refused';
      detail = `${err.status}: ${err.message}`;
    } else {
      next = 'unreachable';
      detail = err instanceof ApiRequestError ? `HTTP ${err.status}` : (err as Error).message;
    }
    // One line per change of state; a refusal for another reason is a change too.
    if (next === this.state && (next === 'unreachable' || detail === this.stateDetail)) return;
    this.state = next;
    this.stateDetail = detail;
    this.opts.log(
      next === 'refused'
        ? `the coordinator refused the heartbeat (${detail}); retrying with backoff`
        : `the coordinator is unreachable (${detail}); retrying with backoff`,
    );
  }

  private detectInBackground() {
    if (this.detecting || this.stopped) return;
    this.detecting = this.detect().finally(() => (this.detecting = null));
  }

  private async detect(): Promise<void> {
    let report: HardwareReport;
    try {
      report = await this.opts.detectHardware();
    } catch (err) {
      this.opts.log(`hardware detection failed: ${(err as Error).message}`);
      this.nextDetectAt = Date.now() + this.hardwareEveryMs;
      return;
    }
    this.nextDetectAt = Date.now() + this.hardwareEveryMs;
    if (!this.confirmed) return this.take(report);
    const digest = hardwareDigest(report);
    if (digest === hardwareDigest(this.confirmed)) {
      this.suspectDigest = null;
      return;
    }
    const now = new Set(report.gpus.map((g) => g.id));
    const lost = this.confirmed.gpus.filter((g) => !now.has(g.id));
    // Losing GPUs takes their jobs away: believe it only when a second detection agrees.
    if (lost.length && this.suspectDigest !== digest) {
      this.suspectDigest = digest;
      this.nextDetectAt = Date.now() + Math.max(this.intervalMs, 2_000);
      return;
    }
    this.suspectDigest = null;
    const gained = report.gpus.filter((g) => !this.confirmed!.gpus.some((c) => c.id === g.id));
    this.opts.log(
      `hardware changed: ${report.gpus.length} GPU${report.gpus.length === 1 ? '' : 's'}` +
        (lost.length ? `, gone ${lost.map((g) => g.id).join(', ')}` : '') +
        (gained.length ? `, new ${gained.map((g) => g.id).join(', ')}` : ''),
    );
    this.take(report);
  }

  private take(report: HardwareReport) {
    this.confirmed = report;
    this.pending = report;
  }
}
