import type { JSONWebKeySet } from 'jose';
import { ApiRequestError, type ApiClient } from '../../shared/client.ts';
import {
  LeaseHeartbeatExtras,
  type FinishReportInput,
  type LeaseGrant,
  type LeaseRef,
  type Work,
} from '../../shared/leases.ts';
import { httpLogTransport } from '../logs/transport.ts';
import { LogShipper } from '../logs/shipper.ts';
import { leaseIo } from '../runtime/io.ts';
import { stopReason, type ExecutionContext, type ExecutionResult, type Executor, type RecoveredRun, type StopReason } from '../runtime/executor.ts';
import { JwksUnavailable, LeaseRefused, LeaseVerifier } from './verify.ts';

export interface RunnerLog {
  info(msg: string, fields?: Record<string, unknown>): void;
  warn(msg: string, fields?: Record<string, unknown>): void;
  error(msg: string, fields?: Record<string, unknown>): void;
}

/** Where a run's output goes: the log shipper by default. */
export interface LogSink {
  write(stream: 'stdout' | 'stderr', text: string): void | Promise<void>;
  close(): Promise<unknown>;
}

export interface LeaseRunnerOptions {
  /** The agent's client: every request carries its own signed token. */
  client: ApiClient;
  nodeId: string;
  /** The coordinator's name stored at join: the issuer of every lease. */
  issuer: string;
  executor: Executor;
  log: RunnerLog;
  /** How long one long-poll waits for work (seconds). */
  pollWaitSeconds?: number;
  /** Output of a run; default: LogShipper over POST /v1/agent/jobs/{id}/logs. */
  logSink?: (grant: LeaseGrant) => LogSink;
  /** Extra ExecutionContext hooks (inputs, outputs, result, progress); default: runtime/io.ts with this client. */
  io?: (grant: LeaseGrant) => Partial<ExecutionContext>;
  /** A recovered run waits this long for a heartbeat to say whether its lease is current. */
  recoveryWaitMs?: number;
}

type Phase = 'verifying' | 'running' | 'reporting' | 'recovering';

interface Run {
  grant: LeaseGrant;
  phase: Phase;
  abort: AbortController;
  /** Local time (ms) the lease expires at, as last renewed: the job is stopped then. */
  deadline: number;
  timer: NodeJS.Timeout | null;
  recovered?: RecoveredRun;
  done?: Promise<void>;
}

const sleep = (ms: number, signal?: AbortSignal) =>
  new Promise<void>((resolve) => {
    const t = setTimeout(resolve, ms);
    signal?.addEventListener('abort', () => {
      clearTimeout(t);
      resolve();
    }, { once: true });
  });

/** An answer that will not change when asked again: 4xx other than 401/408/429. */
const isFinal = (err: unknown) => err instanceof ApiRequestError && err.status >= 400 && err.status < 500 && ![401, 408, 429].includes(err.status);
const isGone = (err: unknown) => err instanceof ApiRequestError && (err.status === 404 || err.status === 409);

/**
 * The agent's lease loop: long-polls GET /v1/agent/work, verifies each lease before anything
 * runs (refusing, and reporting, one that fails), runs it through the executor, reports
 * `running` and the end with the lease epoch. Heartbeat answers renew each lease's expiry, cancel
 * jobs and revoke stale ones. Cut off from the coordinator, a job keeps running until its lease
 * expires as last renewed, and is stopped then, so it never runs on two nodes at once.
 */
export class LeaseRunner {
  private runs = new Map<string, Run>();
  private stopping = new AbortController();
  private polling: Promise<void> | null = null;
  private verifier: LeaseVerifier;
  private draining = false;

  constructor(private o: LeaseRunnerOptions) {
    this.verifier = new LeaseVerifier({
      issuer: o.issuer,
      nodeId: o.nodeId,
      fetchJwks: () => o.client.get<JSONWebKeySet>('/.well-known/jwks.json', { timeoutMs: 10_000 }),
    });
  }

  /** What the heartbeat reports: every lease this agent holds, starting, running or still reporting. */
  heldJobs(): LeaseRef[] {
    return [...this.runs.values()].filter((r) => r.phase !== 'verifying').map((r) => ({ jobId: r.grant.jobId, epoch: r.grant.epoch }));
  }

  get isDraining(): boolean {
    return this.draining;
  }

  /** Jobs by phase, for the agent's status line and tests. */
  snapshot(): { jobId: string; epoch: number; phase: Phase; expiresInMs: number }[] {
    const now = Date.now();
    return [...this.runs.values()].map((r) => ({ jobId: r.grant.jobId, epoch: r.grant.epoch, phase: r.phase, expiresInMs: r.deadline - now }));
  }

  /**
   * A heartbeat's answer. `sentAtMs` is when the heartbeat left: the renewed expiry counts from
   * then, so the agent's deadline is never later than the coordinator's.
   */
  onHeartbeatAnswer(answer: unknown, sentAtMs: number): void {
    const parsed = LeaseHeartbeatExtras.partial().safeParse(answer);
    if (!parsed.success) {
      this.o.log.warn('heartbeat answer without a lease part', { error: parsed.error.message });
      return;
    }
    const a = parsed.data;
    if (a.draining !== undefined && a.draining !== this.draining) {
      this.draining = a.draining;
      this.o.log.info(a.draining ? 'node is draining: running jobs finish, no new ones come' : 'node is no longer draining');
    }
    for (const l of a.leases ?? []) {
      const run = this.runs.get(l.jobId);
      if (!run || run.grant.epoch !== l.epoch) continue;
      this.arm(run, sentAtMs + l.expiresInMs);
      if (l.token) {
        this.verifier.verifyRenewal(l.token, l.jobId, l.epoch).then(
          () => {
            run.grant = { ...run.grant, token: l.token!, expiresAt: l.expiresAt };
          },
          (err) => this.o.log.warn('renewed lease token did not verify; keeping the old one', { jobId: l.jobId, error: String(err?.message ?? err) }),
        );
      }
      if (run.phase === 'recovering') this.resume(run);
    }
    for (const c of a.cancel ?? []) {
      const run = this.runs.get(c.jobId);
      if (run && run.grant.epoch === c.epoch && run.phase !== 'reporting') this.stopRun(run, 'cancelled');
    }
    for (const r of a.revoked ?? []) {
      const run = this.runs.get(r.jobId);
      if (!run || run.grant.epoch !== r.epoch) continue;
      if (run.phase === 'recovering') {
        this.discard(run);
      } else {
        this.stopRun(run, 'lease-lost');
      }
    }
  }

  async start(): Promise<void> {
    await this.recover();
    this.polling = this.pollLoop();
  }

  /** Stops polling and every run (their leases lapse or a restarted agent picks them up). */
  async stop(): Promise<void> {
    this.stopping.abort();
    for (const run of this.runs.values()) if (run.phase !== 'reporting') this.stopRun(run, 'shutdown');
    await this.polling?.catch(() => {});
    await Promise.all([...this.runs.values()].map((r) => r.done?.catch(() => {})));
  }

  private async pollLoop(): Promise<void> {
    const wait = this.o.pollWaitSeconds ?? 30;
    let backoff = 500;
    while (!this.stopping.signal.aborted) {
      try {
        const have = [...this.runs.values()].map((r) => `${r.grant.jobId}.${r.grant.epoch}`).join(',');
        const sentAt = Date.now();
        const work = await this.o.client.get<Work>(`/v1/agent/work?wait=${wait}${have ? `&have=${encodeURIComponent(have)}` : ''}`, {
          signal: this.stopping.signal,
          timeoutMs: (wait + 15) * 1000,
        });
        backoff = 500;
        for (const grant of work.leases) {
          if (this.runs.has(grant.jobId)) continue;
          this.accept(grant, sentAt);
        }
      } catch (err) {
        if (this.stopping.signal.aborted) break;
        this.o.log.warn('work poll failed', { error: String((err as Error)?.message ?? err) });
        await sleep(backoff * (0.5 + Math.random()), this.stopping.signal);
        backoff = Math.min(15_000, backoff * 2);
      }
    }
  }

  /** (Re)sets the run's deadline: at it the job is stopped, its lease having lapsed. */
  private arm(run: Run, deadline: number) {
    run.deadline = deadline;
    if (run.timer) clearTimeout(run.timer);
    if (run.phase === 'reporting') return;
    run.timer = setTimeout(() => {
      if (run.phase === 'recovering') return this.discard(run);
      if (run.phase !== 'reporting') {
        this.o.log.warn('lease expired without renewal: stopping the job', { jobId: run.grant.jobId, epoch: run.grant.epoch });
        this.stopRun(run, 'lease-expired');
      }
    }, Math.max(0, deadline - Date.now()));
    run.timer.unref?.();
  }

  private stopRun(run: Run, why: StopReason) {
    if (!run.abort.signal.aborted) run.abort.abort(why);
  }

  private accept(grant: LeaseGrant, receivedAt: number) {
    const run: Run = { grant, phase: 'verifying', abort: new AbortController(), deadline: receivedAt + grant.expiresInMs, timer: null };
    this.runs.set(grant.jobId, run);
    run.done = this.execute(run).finally(() => {
      if (run.timer) clearTimeout(run.timer);
      if (this.runs.get(grant.jobId) === run) this.runs.delete(grant.jobId);
    });
  }

  private async execute(run: Run, resumed = false): Promise<void> {
    const { grant } = run;
    const fields = { jobId: grant.jobId, epoch: grant.epoch };
    if (!resumed) {
      try {
        await this.verifier.verify(grant);
      } catch (err) {
        if (err instanceof JwksUnavailable) {
          // Nothing is refused for a network failure: the next poll hands the lease out again.
          this.o.log.warn('cannot check a lease yet', { ...fields, error: err.message });
          await sleep(2000, this.stopping.signal);
          return;
        }
        const why = err instanceof LeaseRefused ? err.message : String(err);
        this.o.log.warn('lease refused', { ...fields, error: why });
        run.phase = 'reporting';
        await this.report(run, { epoch: grant.epoch, reason: 'refused', exitCode: null, error: why });
        return;
      }
    }
    run.phase = 'running';
    this.arm(run, run.deadline);
    this.o.log.info(resumed ? 'lease resumed' : 'lease accepted', { ...fields, gpus: grant.gpus.map((g) => g.id), executor: this.o.executor.name });
    const sink = (this.o.logSink ?? this.defaultSink)(grant);
    let runningSent: Promise<void> = Promise.resolve();
    const ctx: ExecutionContext = {
      ...(this.o.io ? this.o.io(grant) : leaseIo(this.o.client, grant, (m, f) => this.o.log.warn(m, f))),
      signal: run.abort.signal,
      onRunning: () => {
        runningSent = this.reportRunning(run);
      },
      onLog: (stream, text) => sink.write(stream, text),
    };
    let result: ExecutionResult;
    try {
      result = await this.o.executor.run(grant, ctx);
    } catch (err) {
      result = { exitCode: null, reason: 'error', error: `the runtime failed: ${(err as Error)?.message ?? String(err)}` };
    }
    await runningSent;
    await sink.close().catch((err) => this.o.log.warn('log shipping did not finish', { ...fields, error: String(err) }));
    const stop = stopReason(run.abort.signal);
    if (stop === 'shutdown' || stop === 'lease-lost' || stop === 'lease-expired') {
      // Not ours to report: the coordinator took the lease back, or it lapses and the job runs again elsewhere.
      this.o.log.info('job stopped without a report', { ...fields, why: stop });
      void result.cleanup?.();
      return;
    }
    run.phase = 'reporting';
    const report: FinishReportInput =
      stop === 'cancelled'
        ? { epoch: grant.epoch, reason: 'cancelled', exitCode: result.exitCode, ...(result.usage ? { usage: result.usage } : {}) }
        : {
            epoch: grant.epoch,
            reason: result.reason,
            exitCode: result.reason === 'succeeded' ? (result.exitCode ?? 0) : result.exitCode,
            ...(result.error ? { error: result.error.slice(0, 4096) } : {}),
            ...(result.usage ? { usage: result.usage } : {}),
          };
    await this.report(run, report);
    // After the report, never before: removing a job's volumes can take seconds.
    void result.cleanup?.();
  }

  private defaultSink = (grant: LeaseGrant): LogSink =>
    new LogShipper({ transport: httpLogTransport(this.o.client, grant.jobId, grant.epoch), warn: (m, f) => this.o.log.warn(m, f) });

  private async reportRunning(run: Run): Promise<void> {
    const { jobId, epoch } = run.grant;
    for (let delay = 500; !run.abort.signal.aborted; delay = Math.min(10_000, delay * 2)) {
      try {
        await this.o.client.post(`/v1/agent/jobs/${encodeURIComponent(jobId)}/running`, { epoch });
        return;
      } catch (err) {
        if (isGone(err)) {
          this.o.log.warn('the coordinator says this lease is gone: stopping the job', { jobId, epoch, error: String((err as Error).message) });
          this.stopRun(run, 'lease-lost');
          return;
        }
        if (isFinal(err)) {
          this.o.log.error('running report refused', { jobId, epoch, error: String((err as Error).message) });
          return;
        }
        await sleep(delay, run.abort.signal);
      }
    }
  }

  /**
   * The end of a run, retried until the coordinator gives an answer that will not change: the
   * database is the truth, and a report with the current epoch counts even after an outage.
   * Meanwhile the job stays in the heartbeat, so its lease is renewed, not expired.
   */
  private async report(run: Run, report: FinishReportInput): Promise<void> {
    const { jobId } = run.grant;
    for (let delay = 500; ; delay = Math.min(30_000, delay * 2)) {
      try {
        const a = await this.o.client.post<{ status: string }>(`/v1/agent/jobs/${encodeURIComponent(jobId)}/finish`, report);
        this.o.log.info('job reported', { jobId, epoch: report.epoch, reason: report.reason, status: a.status });
        return;
      } catch (err) {
        if (isFinal(err)) {
          this.o.log.warn('finish report not taken', { jobId, epoch: report.epoch, error: String((err as Error).message) });
          return;
        }
        if (this.stopping.signal.aborted) return;
        await sleep(delay * (0.5 + Math.random()), this.stopping.signal);
        if (this.stopping.signal.aborted) return;
      }
    }
  }

  /** Runs the runtime left behind at the last stop: held until a heartbeat says whether their lease is current. */
  private async recover(): Promise<void> {
    if (!this.o.executor.recover) return;
    let found: RecoveredRun[];
    try {
      found = await this.o.executor.recover();
    } catch (err) {
      this.o.log.warn('could not look for runs left behind', { error: String((err as Error)?.message ?? err) });
      return;
    }
    for (const rec of found) {
      if (!rec.grant || rec.grant.jobId !== rec.jobId || rec.grant.epoch !== rec.epoch) {
        void this.o.executor.discard?.(rec).catch(() => {});
        continue;
      }
      const run: Run = { grant: rec.grant, phase: 'recovering', abort: new AbortController(), deadline: 0, timer: null, recovered: rec };
      this.runs.set(rec.jobId, run);
      this.arm(run, Date.now() + (this.o.recoveryWaitMs ?? 60_000));
    }
    if (found.length) this.o.log.info('runs left behind: waiting for a heartbeat to say which leases are current', { count: found.length });
  }

  private resume(run: Run) {
    run.phase = 'running';
    run.done = this.execute(run, true).finally(() => {
      if (run.timer) clearTimeout(run.timer);
      if (this.runs.get(run.grant.jobId) === run) this.runs.delete(run.grant.jobId);
    });
  }

  private discard(run: Run) {
    if (this.runs.get(run.grant.jobId) === run) this.runs.delete(run.grant.jobId);
    if (run.timer) clearTimeout(run.timer);
    if (run.recovered) {
      this.o.log.info('discarding a run whose lease is gone', { jobId: run.grant.jobId, epoch: run.grant.epoch });
      void this.o.executor.discard?.(run.recovered).catch(() => {});
    }
  }
}
