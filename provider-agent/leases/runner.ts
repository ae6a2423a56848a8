import { backoffDelay } from '../../shared/backoff.ts';
import { ApiRequestError, type ApiClient } from '../../shared/client.ts';
import {
  FinishReport,
  Jwks,
  ReportAnswer,
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
import { CoordinatorClock } from '../coordinator-clock.ts';
import type { ServiceAddress } from '../tunnel/tunnel.ts';
import type { ReportStore, StoredReport } from './report-store.ts';
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
  /** Where finish reports wait until the coordinator takes them (in the state dir). */
  reports: ReportStore;
  /** The coordinator's clock, read from its answers: lease expiries are its times. */
  clock?: CoordinatorClock;
  /** Service jobs: told when one starts (where it listens) and when its run ends (tunnel/keeper.ts). */
  services?: ServiceHooks;
}

export interface ServiceHooks {
  started(grant: LeaseGrant, address: ServiceAddress, signal: AbortSignal): void;
  ended(grant: LeaseGrant): void;
}

/** `ending`: the job's process has ended and its outputs are being saved; the lease's end no longer stops it. */
type Phase = 'verifying' | 'running' | 'ending' | 'reporting' | 'recovering';

interface Run {
  grant: LeaseGrant;
  phase: Phase;
  abort: AbortController;
  /** Local time (ms) the lease expires at, as last renewed: the job is stopped then. */
  deadline: number;
  timer: NodeJS.Timeout | null;
  recovered?: RecoveredRun;
  done?: Promise<void>;
  /** The job's process started (the runtime said so). */
  started?: boolean;
  /** The coordinator took the `running` report. */
  runningTaken?: boolean;
  /** The process ended after the lease had run out (the agent was frozen): its result is not reported. */
  endedPastLease?: boolean;
}

/** A finish report on its way to the coordinator, kept on disk until it is taken or refused for good. */
interface Delivery {
  stored: StoredReport;
  runningTaken: boolean;
  /** Cuts the wait before the next try short: a heartbeat says the coordinator answers again. */
  wake: () => void;
  done: Promise<void>;
}

const sleep = (ms: number, signal?: AbortSignal) =>
  new Promise<void>((resolve) => {
    if (signal?.aborted) return resolve();
    const onAbort = () => {
      clearTimeout(t);
      resolve();
    };
    const t = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    signal?.addEventListener('abort', onAbort, { once: true });
  });

/** A lease as `jobId.epoch`: the form of the long-poll's `have`. */
const leaseKey = (l: { jobId: string; epoch: number }) => `${l.jobId}.${l.epoch}`;

/** The wait before try `attempt` + 1 (0-based) of a call to the coordinator: doubling from 500 ms up to `capMs`, with jitter. */
const retryDelay = (attempt: number, capMs: number) => backoffDelay(attempt + 1, { initialMs: 500, maxMs: capMs });

/** An answer that will not change when asked again: 4xx other than 401/408/429. */
const isFinal = (err: unknown) => err instanceof ApiRequestError && err.status >= 400 && err.status < 500 && ![401, 408, 429].includes(err.status);
const isGone = (err: unknown) => err instanceof ApiRequestError && (err.status === 404 || err.status === 409);

/**
 * The agent's lease loop: long-polls GET /v1/agent/work, verifies each lease before anything
 * runs (refusing, and reporting, one that fails), runs it through the executor, reports
 * `running` and the end with the lease epoch. Heartbeat answers renew each lease's expiry, cancel
 * jobs and revoke stale ones. Cut off from the coordinator, a job keeps running until its lease
 * expires as last renewed, and is stopped then, so it never runs on two nodes at once. A run
 * that ended is reported once the coordinator answers, from the state dir if the agent restarted
 * meanwhile; the coordinator takes it if the epoch is still the job's.
 */
export class LeaseRunner {
  private runs = new Map<string, Run>();
  /** By `jobId.epoch`: a job may hold a new lease here while the end of its old one is still to be delivered. */
  private deliveries = new Map<string, Delivery>();
  private stopping = new AbortController();
  private polling: Promise<void> | null = null;
  private verifier: LeaseVerifier;
  private draining = false;
  private readonly clock: CoordinatorClock;

  constructor(private o: LeaseRunnerOptions) {
    this.clock = o.clock ?? new CoordinatorClock();
    this.verifier = new LeaseVerifier({
      issuer: o.issuer,
      nodeId: o.nodeId,
      fetchJwks: () => o.client.get('/.well-known/jwks.json', Jwks, { timeoutMs: 10_000 }),
      // A lease token's exp is the coordinator's time.
      now: () => new Date(this.clock.coordinatorNow()),
    });
  }

  /**
   * What the heartbeat reports: every lease this agent holds, starting, running or still to be
   * reported (so that the coordinator keeps it until the report comes).
   */
  heldJobs(): LeaseRef[] {
    const held = new Map<string, LeaseRef>();
    for (const r of this.runs.values()) if (r.phase !== 'verifying') held.set(leaseKey(r.grant), { jobId: r.grant.jobId, epoch: r.grant.epoch });
    for (const [key, d] of this.deliveries) held.set(key, { jobId: d.stored.jobId, epoch: d.stored.epoch });
    return [...held.values()];
  }

  get isDraining(): boolean {
    return this.draining;
  }

  /** Jobs by phase, for the agent's status line and tests. */
  snapshot(): { jobId: string; epoch: number; phase: Phase; expiresInMs: number }[] {
    const now = Date.now();
    return [...this.runs.values()].map((r) => ({ jobId: r.grant.jobId, epoch: r.grant.epoch, phase: r.phase, expiresInMs: r.deadline - now }));
  }

  /** A heartbeat's answer: renewed expiries (the coordinator's times), cancellations, revocations. */
  onHeartbeatAnswer(answer: unknown): void {
    // The coordinator answers again: a report waiting for its next try goes now.
    for (const d of this.deliveries.values()) d.wake();
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
      this.arm(run, this.localDeadline(l.expiresAt, l.expiresInMs));
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
      // A run that has ended already is reported as it ended.
      if (run && run.grant.epoch === c.epoch && run.phase !== 'reporting' && run.phase !== 'ending') this.stopRun(run, 'cancelled');
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
    await this.resumeDeliveries();
    await this.recover();
    this.polling = this.pollLoop();
  }

  /**
   * Stops polling and every run (their leases lapse or a restarted agent picks them up); reports
   * not yet taken stay on disk for the next agent.
   */
  async stop(): Promise<void> {
    this.stopping.abort();
    for (const run of this.runs.values()) if (run.phase !== 'reporting' && run.phase !== 'ending') this.stopRun(run, 'shutdown');
    await this.polling?.catch(() => {});
    await Promise.all([...this.runs.values()].map((r) => r.done?.catch(() => {})));
    await Promise.all([...this.deliveries.values()].map((d) => d.done.catch(() => {})));
  }

  /** A lease expiry (the coordinator's time) as a local deadline; the duration when the time does not parse. */
  private localDeadline(expiresAt: string, expiresInMs: number): number {
    const at = Date.parse(expiresAt);
    return Number.isFinite(at) ? this.clock.toLocal(at) : Date.now() + expiresInMs;
  }

  private async pollLoop(): Promise<void> {
    const wait = this.o.pollWaitSeconds ?? 30;
    let failures = 0;
    while (!this.stopping.signal.aborted) {
      try {
        const held = new Set(this.deliveries.keys());
        for (const r of this.runs.values()) held.add(leaseKey(r.grant));
        const have = [...held].join(',');
        const work = await this.o.client.get<Work>(`/v1/agent/work?wait=${wait}${have ? `&have=${encodeURIComponent(have)}` : ''}`, {
          signal: this.stopping.signal,
          timeoutMs: (wait + 15) * 1000,
        });
        failures = 0;
        for (const grant of work.leases) {
          if (this.runs.has(grant.jobId) || this.deliveries.has(leaseKey(grant))) continue;
          this.accept(grant);
        }
      } catch (err) {
        if (this.stopping.signal.aborted) break;
        this.o.log.warn('work poll failed', { error: String((err as Error)?.message ?? err) });
        // A 503 with Retry-After (the coordinator's database is away): back when it says, not later.
        const asked = err instanceof ApiRequestError && err.retryAfterSeconds !== null ? Math.max(500, err.retryAfterSeconds * 1000) : Number.POSITIVE_INFINITY;
        await sleep(Math.min(asked, retryDelay(failures++, 15_000)), this.stopping.signal);
      }
    }
  }

  /** (Re)sets the run's deadline: at it the job is stopped, its lease having lapsed. */
  private arm(run: Run, deadline: number) {
    run.deadline = deadline;
    if (run.timer) clearTimeout(run.timer);
    if (run.phase === 'reporting' || run.phase === 'ending') return;
    // A recovered run's deadline is only how long it waits for a heartbeat, not its lease's end.
    if (run.phase !== 'recovering') this.o.executor.leaseDeadline?.({ jobId: run.grant.jobId, epoch: run.grant.epoch }, deadline);
    run.timer = setTimeout(() => {
      if (run.phase === 'recovering') return this.discard(run);
      if (run.phase === 'verifying' || run.phase === 'running') {
        this.o.log.warn('lease expired without renewal: stopping the job', { jobId: run.grant.jobId, epoch: run.grant.epoch });
        this.stopRun(run, 'lease-expired');
      }
    }, Math.max(0, deadline - Date.now()));
    run.timer.unref?.();
  }

  private stopRun(run: Run, why: StopReason) {
    if (!run.abort.signal.aborted) run.abort.abort(why);
  }

  /** A new lease: it runs until its own expiry (the coordinator's time), however long the poll that brought it waited. */
  private accept(offered: LeaseGrant) {
    // What the task is comes from the verified token alone (execute), never from the answer.
    const { task: _unverified, ...grant } = offered;
    const deadline = this.localDeadline(grant.expiresAt, grant.expiresInMs);
    const run: Run = { grant, phase: 'verifying', abort: new AbortController(), deadline, timer: null };
    this.runs.set(grant.jobId, run);
    run.done = this.execute(run).finally(() => {
      if (run.timer) clearTimeout(run.timer);
      if (this.runs.get(grant.jobId) === run) this.runs.delete(grant.jobId);
    });
  }

  private async execute(run: Run, resumed = false): Promise<void> {
    let { grant } = run;
    const fields = { jobId: grant.jobId, epoch: grant.epoch };
    if (!resumed) {
      try {
        const claims = await this.verifier.verify(grant);
        if (claims.task) run.grant = grant = { ...grant, task: claims.task };
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
        await this.finish(run, { epoch: grant.epoch, reason: 'refused', exitCode: null, error: why });
        return;
      }
    }
    run.phase = 'running';
    this.arm(run, run.deadline);
    this.o.log.info(resumed ? 'lease resumed' : 'lease accepted', { ...fields, gpus: grant.gpus.map((g) => g.id), executor: this.o.executor.name });
    const sink = (this.o.logSink ?? this.defaultSink)(grant);
    // The `running` report is retried only while the job runs: the finish report sends it first if it was not taken.
    const runningTries = new AbortController();
    const exited = () => {
      if (run.phase !== 'running') return;
      run.endedPastLease = Date.now() >= run.deadline;
      run.phase = 'ending';
      if (run.timer) clearTimeout(run.timer);
    };
    const ctx: ExecutionContext = {
      ...(this.o.io ? this.o.io(grant) : leaseIo(this.o.client, grant, (m, f) => this.o.log.warn(m, f))),
      signal: run.abort.signal,
      onRunning: (service) => {
        run.started = true;
        void this.reportRunning(run, runningTries.signal);
        if (service && grant.spec.service) this.o.services?.started(grant, service, runningTries.signal);
      },
      onExited: exited,
      onLog: (stream, text) => sink.write(stream, text),
      // The last lines go while the outputs are saved; the finish report waits for both.
      onOutputEnd: () => void sink.close().catch(() => {}),
    };
    let result: ExecutionResult;
    try {
      result = await this.o.executor.run(grant, ctx);
    } catch (err) {
      result = { exitCode: null, reason: 'error', error: `the runtime failed: ${(err as Error)?.message ?? String(err)}` };
    }
    exited();
    runningTries.abort();
    if (grant.spec.service) this.o.services?.ended(grant);
    let stop = stopReason(run.abort.signal);
    // Ended past its lease (the agent was frozen, and a watchdog may have stopped it): the job
    // may run elsewhere by now, and the end is not the job's own.
    if (!stop && run.endedPastLease) stop = 'lease-expired';
    if (stop === 'shutdown' || stop === 'lease-lost' || stop === 'lease-expired') {
      // Not ours to report: the coordinator took the lease back, or it lapses and the job runs again elsewhere.
      this.o.log.info('job stopped without a report', { ...fields, why: stop });
      // What output is left goes while it can (the coordinator may be away: at most the shipper's deadline).
      await sink.close().catch((err) => this.o.log.warn('log shipping did not finish', { ...fields, error: String(err) }));
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
    await this.finish(run, report, sink);
    // After the report, never before: removing a job's volumes can take seconds.
    void result.cleanup?.();
  }

  /**
   * A run's end: kept on disk first (the coordinator may be away, and the agent may restart before
   * it is back), then its output shipped (the coordinator takes no output after the end), then
   * reported.
   */
  private async finish(run: Run, report: FinishReportInput, sink?: LogSink): Promise<void> {
    const { jobId, epoch } = run.grant;
    const stored: StoredReport = { jobId, epoch, report: FinishReport.parse(report), started: run.started ?? false, endedAt: new Date().toISOString() };
    try {
      await this.o.reports.save(stored);
    } catch (err) {
      this.o.log.warn('could not keep the finish report on disk; it is lost if the agent stops before the coordinator takes it', { jobId, epoch, error: String((err as Error)?.message ?? err) });
    }
    this.o.log.info('job ended; its report is kept until the coordinator takes it', { jobId, epoch, reason: stored.report.reason });
    await sink?.close().catch((err) => this.o.log.warn('log shipping did not finish', { jobId, epoch, error: String(err) }));
    await this.deliver(stored, run.runningTaken ?? false);
  }

  private defaultSink = (grant: LeaseGrant): LogSink =>
    new LogShipper({ transport: httpLogTransport(this.o.client, grant.jobId, grant.epoch), warn: (m, f) => this.o.log.warn(m, f) });

  private async reportRunning(run: Run, tries: AbortSignal): Promise<void> {
    const { jobId, epoch } = run.grant;
    for (let attempt = 0; !run.abort.signal.aborted && !tries.aborted; attempt++) {
      try {
        await this.o.client.post(`/v1/agent/jobs/${encodeURIComponent(jobId)}/running`, { epoch }, ReportAnswer);
        run.runningTaken = true;
        return;
      } catch (err) {
        // The run ended meanwhile: its finish report speaks for it now.
        if (tries.aborted) return;
        if (isGone(err)) {
          this.o.log.warn('the coordinator says this lease is gone: stopping the job', { jobId, epoch, error: String((err as Error).message) });
          this.stopRun(run, 'lease-lost');
          return;
        }
        if (isFinal(err)) {
          this.o.log.error('running report refused', { jobId, epoch, error: String((err as Error).message) });
          return;
        }
        await sleep(retryDelay(attempt, 10_000), AbortSignal.any([run.abort.signal, tries]));
      }
    }
  }

  /**
   * Delivers a kept report, retried with backoff until the coordinator gives an answer that will
   * not change: the database is the truth, and a report with the job's current epoch counts even
   * after an outage (meanwhile the job stays in the heartbeat, so its lease is renewed, not
   * expired). A 409 (the epoch is not the job's any more) or another final 4xx drops it; the agent
   * stopping leaves it on disk for the next one.
   */
  private deliver(stored: StoredReport, runningTaken: boolean): Promise<void> {
    const key = leaseKey(stored);
    const existing = this.deliveries.get(key);
    if (existing) return existing.done;
    const d: Delivery = { stored, runningTaken: runningTaken || !stored.started, wake: () => {}, done: Promise.resolve() };
    this.deliveries.set(key, d);
    d.done = this.deliverLoop(d).finally(() => {
      if (this.deliveries.get(key) === d) this.deliveries.delete(key);
    });
    return d.done;
  }

  private async deliverLoop(d: Delivery): Promise<void> {
    const { jobId, epoch, report } = d.stored;
    const path = `/v1/agent/jobs/${encodeURIComponent(jobId)}`;
    for (let attempt = 0; ; attempt++) {
      try {
        // In order: the coordinator records when the job started from the `running` report (again is harmless).
        if (!d.runningTaken) {
          await this.o.client.post(`${path}/running`, { epoch }, ReportAnswer);
          d.runningTaken = true;
        }
        const a = await this.o.client.post(`${path}/finish`, report, ReportAnswer);
        this.o.log.info('job reported', { jobId, epoch, reason: report.reason, status: a.status });
        break;
      } catch (err) {
        if (err instanceof ApiRequestError && err.status === 409) {
          this.o.log.info('report dropped: the job is no longer held at this epoch', { jobId, epoch, error: err.message });
          break;
        }
        if (isFinal(err)) {
          this.o.log.warn('report dropped: the coordinator refused it', { jobId, epoch, status: (err as ApiRequestError).status, error: (err as Error).message });
          break;
        }
        if (this.stopping.signal.aborted) return;
        const woken = new AbortController();
        d.wake = () => woken.abort();
        await sleep(retryDelay(attempt, 30_000), AbortSignal.any([this.stopping.signal, woken.signal]));
        d.wake = () => {};
        if (this.stopping.signal.aborted) return;
      }
    }
    await this.o.reports.remove(jobId, epoch).catch((err) => this.o.log.warn('could not remove a delivered report', { jobId, epoch, error: String(err) }));
  }

  /** Reports kept by an earlier agent (the coordinator was away when their runs ended): delivered now. */
  private async resumeDeliveries(): Promise<void> {
    let found: Awaited<ReturnType<ReportStore['list']>>;
    try {
      found = await this.o.reports.list();
    } catch (err) {
      this.o.log.warn('could not read the kept reports', { dir: this.o.reports.dir, error: String((err as Error)?.message ?? err) });
      return;
    }
    for (const name of found.damaged) {
      this.o.log.warn('removing a kept report that does not read back', { file: name });
      await this.o.reports.removeDamaged(name).catch(() => {});
    }
    for (const stored of found.reports) {
      this.o.log.info('delivering a report kept from before', { jobId: stored.jobId, epoch: stored.epoch, reason: stored.report.reason, endedAt: stored.endedAt });
      void this.deliver(stored, false);
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
      if (rec.stoppedAtLeaseEnd) {
        this.o.log.info('discarding a run whose lease is gone (stopped at its lease end while no agent ran)', { jobId: rec.jobId, epoch: rec.epoch });
        void this.o.executor.discard?.(rec).catch(() => {});
        continue;
      }
      // A run whose end is kept already: what is left of it goes.
      const reported = this.deliveries.has(leaseKey(rec));
      if (reported || !rec.grant || rec.grant.jobId !== rec.jobId || rec.grant.epoch !== rec.epoch) {
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
