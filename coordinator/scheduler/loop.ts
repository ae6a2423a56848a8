import type postgres from 'postgres';
import type { Clock } from '../clock.ts';
import type { Database } from '../db/open.ts';
import { isDatabaseUnavailable } from '../db/availability.ts';
import { lockKeys } from '../db/migrate.ts';
import { describeFailure, type Logger } from '../log.ts';
import { topics, type Signals } from '../signals.ts';
import { schedulePass, type PassDeps, type PassResult, type PassState, type StaleNodes } from './placement.ts';

/**
 * How long passes may place on one reading of the nodes. What changes a node (a join, a finish,
 * a hardware report, a drain, going offline) arrives as an event naming it and is read again
 * before the next pass; this full read is the backstop for anything no event names.
 */
const snapshotMaxAgeMs = 2000;

/** How often a pass reads the whole queue to refresh the reasons of jobs that cannot fit. */
const fullPassEveryMs = 60_000;

/** A lock query that takes longer counts as the session being gone. */
const electionTimeoutMs = 3000;

function withTimeout<T>(work: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([
    work,
    new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`no answer from the database in ${ms} ms`)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

/**
 * Channel that carries "run a pass" to the active scheduler on another replica. The payload names
 * the nodes that changed: '' none, '*' every node, else node ids joined by commas.
 */
export const scheduleChannel = 'gantry_schedule';

/** NOTIFY payloads stay under PostgreSQL's 8,000 bytes: more changed nodes than this travel as '*'. */
const maxNotifiedNodes = 200;

export interface SchedulerOptions {
  database: Database;
  clock: Clock;
  log: Logger;
  signals: Signals;
  leaseTtlSeconds: number;
  batchSize: number;
  /** The backstop: a pass at least this often, woken or not. */
  tickMs: number;
  /** How often a standby tries to become the active scheduler. */
  electionMs?: number;
  /** Told after each committed batch which nodes got leases (wakes their long-polls). */
  onLeased: (nodeIds: string[]) => void;
  /** The billing period and the platform's fee leases are granted with (default: half a TTL, no fee). */
  billing?: PassDeps['billing'];
}

/**
 * The scheduler loop. One is active at a time: on PostgreSQL the one holding a session advisory
 * lock on a connection of its own (through the pool, lock and unlock could land on different
 * connections: PITFALLS.md); a standby tries again every second, so when the active one dies
 * (its session ends, its lock with it) another takes over within seconds. On PGlite the one
 * process is always active. A pass runs at once when woken (a submit, freed capacity), and on
 * a tick as a backstop.
 */
export class SchedulerLoop {
  private stopped = false;
  private started = false;
  private dirty = false;
  private running: Promise<void> | null = null;
  private timer: NodeJS.Timeout | null = null;
  private electionTimer: NodeJS.Timeout | null = null;
  /** PostgreSQL: the one-connection client whose session holds (or tries for) the scheduler lock. */
  private session: postgres.Sql | null = null;
  private leader: boolean;
  private offs: (() => void | Promise<void>)[] = [];
  /** What this replica (not the active scheduler) has still to tell the one that is. */
  private forward = { sending: false, wake: false, stale: { all: false, ids: new Set<string>() } as StaleNodes };
  private lastFullPass = 0;
  /** The node snapshot passes reuse for a moment (see PassDeps.snapshot). */
  private snapshot: { state: PassState | null; maxAgeMs: number; stale: StaleNodes } = {
    state: null,
    maxAgeMs: snapshotMaxAgeMs,
    stale: { all: false, ids: new Set() },
  };
  private recheck: NodeJS.Timeout | null = null;
  private refresh = { lastAt: 0, everyMs: 2000 };
  /** The reason this scheduler last wrote for each shape that fits nowhere. */
  private reasons = new Map<string, string>();
  /** Totals since start, for logs and the benchmark. */
  readonly totals = { passes: 0, placed: 0, conflicts: 0, errors: 0 };

  constructor(private opts: SchedulerOptions) {
    this.leader = opts.database.driver === 'pglite';
  }

  get isLeader(): boolean {
    return this.leader;
  }

  async start(): Promise<void> {
    if (this.started) return;
    this.started = true;
    this.offs.push(this.opts.signals.on(topics.schedule, () => this.onLocalWake(null)));
    this.offs.push(this.opts.signals.on(topics.nodeChanged, (nodeId) => this.onLocalWake(nodeId || '*')));
    if (this.opts.database.driver === 'postgres') {
      this.offs.push(
        await this.opts.database.listen(scheduleChannel, (payload) => {
          if (payload) for (const id of payload.split(',')) this.markStale(this.snapshot.stale, id);
          this.wake();
        }),
      );
      await this.elect();
    }
    this.schedule();
    this.wake();
  }

  /** Asks for a pass as soon as the current one (if any) ends. */
  wake(): void {
    if (this.stopped || !this.leader) return;
    this.dirty = true;
    if (!this.running) this.running = this.drain();
  }

  /**
   * Runs one pass now, whoever is leader. A full pass reads every queued job and refreshes the
   * reasons of those that cannot fit; the loop runs one every few seconds, tests whenever they call.
   */
  runPass(full = true): Promise<PassResult> {
    return schedulePass({
      full,
      database: this.opts.database,
      clock: this.opts.clock,
      log: this.opts.log,
      leaseTtlSeconds: this.opts.leaseTtlSeconds,
      batchSize: this.opts.batchSize,
      billing: this.opts.billing,
      onLeased: this.opts.onLeased,
      reasons: this.reasons,
      snapshot: this.snapshot,
      refresh: this.refresh,
      onBatch: (placed) => {
        this.totals.placed += placed;
      },
    });
  }

  /** Waits for the passes asked for so far to finish (tests). */
  async idle(): Promise<void> {
    while (this.running) await this.running;
  }

  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    if (this.electionTimer) clearTimeout(this.electionTimer);
    if (this.recheck) clearTimeout(this.recheck);
    for (const off of this.offs.splice(0)) await off();
    await this.running?.catch(() => {});
    await this.resign();
  }

  /** A node's id, '*' for every node, null for no node (a submit). */
  private markStale(stale: StaleNodes, node: string | null) {
    if (node === '*') stale.all = true;
    else if (node) stale.ids.add(node);
  }

  /** `node`: what changed, as markStale takes it. */
  private onLocalWake(node: string | null) {
    if (this.leader) {
      this.markStale(this.snapshot.stale, node);
      return this.wake();
    }
    // Not the active one here: pass the news on to whoever is, at most one NOTIFY in flight.
    if (this.stopped) return;
    this.forward.wake = true;
    this.markStale(this.forward.stale, node);
    if (!this.forward.sending) void this.sendForward();
  }

  private async sendForward() {
    const f = this.forward;
    f.sending = true;
    try {
      while (f.wake && !this.stopped) {
        const payload = f.stale.all || f.stale.ids.size > maxNotifiedNodes ? '*' : [...f.stale.ids].join(',');
        f.wake = false;
        f.stale.all = false;
        f.stale.ids.clear();
        await this.opts.database.notify(scheduleChannel, payload).catch(() => {});
      }
    } finally {
      f.sending = false;
    }
  }

  private async drain(): Promise<void> {
    try {
      while (this.dirty && !this.stopped && this.leader) {
        this.dirty = false;
        try {
          const now = Date.now();
          const full = now - this.lastFullPass >= fullPassEveryMs;
          if (full) this.lastFullPass = now;
          const r = await this.runPass(full);
          this.totals.passes++;
          // Changed nodes a pass left unread (it reads a bounded number): the next pass reads them.
          if (this.snapshot.stale.ids.size) this.dirty = true;
          // A pass on a kept snapshot could not see capacity freed meanwhile (nor the jobs its
          // bounds left out): another look once the snapshot is read again. While jobs wait,
          // their reasons are worked out again every few seconds.
          const now2 = Date.now();
          const dueTimes = [
            ...(r.snapshotAgeMs ? [snapshotMaxAgeMs - r.snapshotAgeMs] : []),
            ...(this.reasons.size ? [this.refresh.lastAt + this.refresh.everyMs - now2] : []),
          ];
          const next = dueTimes.length ? Math.min(...dueTimes) : null;
          if (next !== null && !this.recheck) {
            this.recheck = setTimeout(() => {
              this.recheck = null;
              this.wake();
            }, Math.max(10, next));
            this.recheck.unref?.();
          }
          this.totals.conflicts += r.conflicts;
        } catch (err) {
          this.totals.errors++;
          if (this.stopped) break;
          if (isDatabaseUnavailable(err) && this.opts.database.driver === 'postgres') {
            // The database went away: its lock may have gone with it. No pass until the election
            // (within a second) finds this session still holding it, or takes it anew.
            this.opts.log.warn('lost the scheduler lock', { error: `a pass failed: ${String((err as Error)?.message ?? err)}` });
            this.leader = false;
            break;
          }
          this.opts.log.error('scheduler pass failed', { error: describeFailure(err) });
          // Do not spin on a failing database: the tick brings the next pass.
          break;
        }
      }
    } finally {
      this.running = null;
    }
  }

  private schedule() {
    if (this.stopped) return;
    this.timer = setTimeout(() => {
      this.wake();
      this.schedule();
    }, this.opts.tickMs);
    this.timer.unref?.();
  }

  /**
   * PostgreSQL: try to take the lock, or check that the session holding it still does; again every
   * second. The lock lives on a client of its own with one connection: when the database goes away
   * the session dies with the lock, this scheduler stands down, and it competes again once the
   * database is back (its client reconnects as a new session, which must take the lock anew).
   */
  private async elect(): Promise<void> {
    if (this.stopped) return;
    try {
      this.session ??= this.opts.database.session!();
      const session = this.session;
      if (this.leader) {
        const [row] = await withTimeout(
          session`select exists (select 1 from pg_locks where locktype = 'advisory' and classid = 0 and objid = ${lockKeys.scheduler}
            and objsubid = 1 and pid = pg_backend_pid() and granted) as held`,
          electionTimeoutMs,
        );
        if (!row?.held) throw new Error('the session that held the scheduler lock is gone');
      } else {
        const [row] = await withTimeout(session`select pg_try_advisory_lock(${lockKeys.scheduler}) as ok`, electionTimeoutMs);
        if (row?.ok && !this.stopped) {
          this.leader = true;
          // What it read while it last led is older than what the active one placed since.
          this.snapshot.stale.all = true;
          this.opts.log.info('this coordinator is the active scheduler');
          this.wake();
        }
      }
    } catch (err) {
      if (this.leader) this.opts.log.warn('lost the scheduler lock', { error: String((err as Error)?.message ?? err) });
      this.leader = false;
      // A session that did not answer may still hold the lock: end it, so the server lets the lock go.
      const session = this.session;
      this.session = null;
      void session?.end({ timeout: 0 }).catch(() => {});
    }
    if (this.stopped) return;
    this.electionTimer = setTimeout(() => void this.elect(), this.opts.electionMs ?? 1000);
    this.electionTimer.unref?.();
  }

  private async resign(): Promise<void> {
    const session = this.session;
    this.session = null;
    const wasLeader = this.leader;
    this.leader = false;
    if (!session) return;
    if (wasLeader) await withTimeout(session`select pg_advisory_unlock(${lockKeys.scheduler})`, electionTimeoutMs).catch(() => {});
    // Ending the session lets go of the lock in any case.
    await session.end({ timeout: 1 }).catch(() => {});
  }
}
