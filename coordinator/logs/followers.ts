import { setImmediate as nextTurn } from 'node:timers/promises';
import { sql } from 'drizzle-orm';
import { isTerminal } from '../../shared/jobs.ts';
import type { LogBatch, LogStreamEnd } from '../../shared/logs.ts';
import { toNumber, type Database } from '../db/open.ts';
import { jobLogs, jobs } from '../db/schema/index.ts';
import { ApiError } from '../errors.ts';
import type { Signals } from '../signals.ts';
import { logTopic, readChunks } from './service.ts';

// Log followers (GET /v1/jobs/:id/logs?follow=1), all of one coordinator in one place: one
// feed per followed job reads its new chunks once and hands them to every follower, one poll a
// second looks at every followed job at once (its status and last seq: chunks stored and jobs
// ended on other replicas), and one query every few seconds re-checks every key that holds a
// stream open. A follower costs no query and no timer of its own while it waits, and writes to
// many followers go out a slice at a time, so a thousand of them never hold the event loop
// (and the heartbeats queued behind it) for one long turn.

/** Where a follower's events go: the SSE stream, in the HTTP layer. */
export interface FollowerSink {
  send(event: { event: string; id?: string; data: string }): Promise<void>;
  comment(text: string): Promise<void>;
  readonly aborted: boolean;
  onAbort(fn: () => void): void;
}

export interface FollowLimits {
  perKey: number;
  total: number;
  maxLifeMs: number;
}

export interface FollowRequest {
  jobId: string;
  /** The seq of the last chunk the client has; -1 for the whole log. */
  after: number;
  /** Whose credential holds the stream open: followers of one key are checked together. */
  keyId: string;
  sink: FollowerSink;
}

/** The keys behind open streams: revocations as they happen, and their state read again. */
export interface StreamCredentials {
  /** Calls fn with each key id revoked from now on (here or, through NOTIFY, on another replica). */
  onRevoked(fn: (keyId: string) => void): () => void;
  /** The keys among these that no longer hold, with why (revoked, expired, gone): one query. */
  refusals(keyIds: string[]): Promise<Map<string, ApiError>>;
}

/** How often the followed jobs are looked at (chunks from other replicas, ends). */
const pollMs = 1000;
/**
 * How often the keys holding streams are read again: what bounds a revocation whose NOTIFY was
 * lost, and an expiry (a revocation on any replica ends its streams at once through onRevoked).
 */
const recheckMs = 3000;
/** A follower with nothing written for this long (less its own jitter, up to half) gets a comment. */
const keepaliveMs = 15_000;
/** Max life is cut by up to this share, per stream: followers opened together do not all reconnect together. */
const maxLifeJitter = 0.1;
/** Writes to followers per event-loop turn: the rest wait for the next turn, behind other requests. */
const writesPerTurn = 32;
const batchLines = 10_000;
const jobsPerQuery = 1000;
/** A follower this far behind in its own writes is ended; its client resumes from the last id it got. */
const maxQueuedEvents = 20_000;
/** How long a feed waits for its slowest follower's writes before it reads on. */
const drainWaitMs = 2000;
/** What a 429 tells a client to wait: streams end within max life, most much sooner. */
const retryAfterSeconds = 10;

type Event = { event: string; id?: string; data: string } | { comment: string };

class Follower {
  readonly queue: Event[] = [];
  ended: LogStreamEnd | null = null;
  lastWriteMs = Date.now();
  /** Followers opened together spread their keepalives over half the interval. */
  readonly keepaliveAfterMs = keepaliveMs * (1 - Math.random() / 2);
  private pumping: Promise<void> | null = null;
  private drainedWaiters: (() => void)[] = [];
  private finished!: () => void;
  readonly done = new Promise<void>((r) => (this.finished = r));

  constructor(
    readonly req: FollowRequest,
    public after: number,
    readonly endsAtMs: number,
  ) {}

  push(e: Event) {
    if (this.ended) return;
    this.queue.push(e);
    this.lastWriteMs = Date.now();
    this.pumping ??= this.pump();
  }

  end(why: LogStreamEnd) {
    if (this.ended) return;
    if (!this.req.sink.aborted) this.queue.push({ event: 'end', data: JSON.stringify(why) });
    this.ended = why;
    this.pumping ??= this.pump();
  }

  /** Resolves when everything queued is written (or the follower is gone). */
  drained(): Promise<void> {
    if (!this.queue.length || this.ended) return Promise.resolve();
    return new Promise((r) => this.drainedWaiters.push(r));
  }

  private async pump() {
    try {
      while (this.queue.length && !this.req.sink.aborted) {
        const e = this.queue.shift()!;
        if ('comment' in e) await this.req.sink.comment(e.comment);
        else await this.req.sink.send(e);
        if (!this.queue.length) this.drainedWaiters.splice(0).forEach((r) => r());
      }
    } catch {
      // The client went away mid-write.
      this.ended ??= { reason: 'gone' };
      this.queue.length = 0;
    } finally {
      this.pumping = null;
      this.drainedWaiters.splice(0).forEach((r) => r());
      if (this.ended || this.req.sink.aborted) this.finished();
      else if (this.queue.length) this.pumping = this.pump();
    }
  }
}

/** One followed job: its followers, and whether a read of its new chunks is under way or wanted. */
interface Feed {
  jobId: string;
  followers: Set<Follower>;
  reading: boolean;
  readAgain: boolean;
  /** Set once a poll saw the job ended: its last chunk's seq, and the end event. */
  ending?: { end: LogStreamEnd; lastSeq: number };
  off: () => void;
}

export class LogFollowers {
  private feeds = new Map<string, Feed>();
  private perKey = new Map<string, number>();
  private open = 0;
  private timer: NodeJS.Timeout | null = null;
  private polling = false;
  private pollAgain = false;
  private stopped = false;
  private lastRecheckMs = Date.now();
  private offRevoked: () => void;

  constructor(
    private database: Database,
    private signals: Signals,
    private limits: FollowLimits,
    private credentials: StreamCredentials,
  ) {
    this.offRevoked = this.credentials.onRevoked((keyId) => this.endKey(keyId, { reason: 'revoked', detail: 'the API key was revoked' }));
  }

  /** Open streams on this coordinator. */
  get count(): number {
    return this.open;
  }

  /**
   * Takes a stream slot for the key, or refuses past the caps (429 with Retry-After). The
   * caller must give it back with the returned function if it does not go on to follow().
   */
  reserve(keyId: string): () => void {
    if (this.stopped) throw new ApiError('unavailable', 'the coordinator is shutting down; reconnect');
    const mine = this.perKey.get(keyId) ?? 0;
    if (mine >= this.limits.perKey) {
      throw new ApiError('rate_limited', `this key has ${mine} log streams open, the most one key may hold; close one or wait`, undefined, {
        retryAfterSeconds,
      });
    }
    if (this.open >= this.limits.total) {
      throw new ApiError('rate_limited', 'this coordinator holds as many log streams as it may; try again shortly', undefined, {
        retryAfterSeconds,
      });
    }
    this.perKey.set(keyId, mine + 1);
    this.open++;
    let given = false;
    return () => {
      if (given) return;
      given = true;
      this.open--;
      const left = (this.perKey.get(keyId) ?? 1) - 1;
      if (left > 0) this.perKey.set(keyId, left);
      else this.perKey.delete(keyId);
    };
  }

  /** Streams the job's chunks after req.after to the sink until the job ends, the credential fails, or the stream's life is up. */
  async follow(req: FollowRequest): Promise<void> {
    const follower = new Follower(req, req.after, Date.now() + this.limits.maxLifeMs * (1 - Math.random() * maxLifeJitter));
    req.sink.onAbort(() => follower.end({ reason: 'gone' }));
    if (req.sink.aborted) follower.end({ reason: 'gone' });
    let feed = this.feeds.get(req.jobId);
    if (!feed) {
      const jobId = req.jobId;
      const created: Feed = { jobId, followers: new Set(), reading: false, readAgain: false, off: () => {} };
      created.off = this.signals.on(logTopic(jobId), () => void this.read(created));
      this.feeds.set(jobId, (feed = created));
    }
    feed.followers.add(follower);
    this.startTimer();
    // A new follower may be behind the others (a resume, a first look): its backlog is read now,
    // and the poll tells at once whether the job has already ended.
    void this.read(feed);
    this.requestPoll();
    try {
      await follower.done;
    } finally {
      feed.followers.delete(follower);
      if (!feed.followers.size && this.feeds.get(feed.jobId) === feed) {
        feed.off();
        this.feeds.delete(feed.jobId);
      }
    }
  }

  /** Ends every stream (the coordinator is stopping): clients reconnect to another replica or after the restart. */
  async stop(): Promise<void> {
    this.stopped = true;
    this.offRevoked();
    const all = [...this.feeds.values()].flatMap((f) => [...f.followers]);
    for (const f of all) f.end({ reason: 'shutdown' });
    await Promise.all(all.map((f) => Promise.race([f.done, new Promise((r) => setTimeout(r, 1000))])));
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
  }

  private endKey(keyId: string, why: LogStreamEnd) {
    void sliced(this.live().filter((f) => f.req.keyId === keyId), (f) => f.end(why));
  }

  private live(): Follower[] {
    const out: Follower[] = [];
    for (const feed of this.feeds.values()) for (const f of feed.followers) if (!f.ended) out.push(f);
    return out;
  }

  private startTimer() {
    if (this.timer) return;
    this.timer = setInterval(() => this.requestPoll(), pollMs);
    this.timer.unref();
  }

  private requestPoll() {
    if (this.polling) {
      this.pollAgain = true;
      return;
    }
    this.polling = true;
    void this.poll().finally(() => {
      this.polling = false;
      if (this.pollAgain) {
        this.pollAgain = false;
        this.requestPoll();
      }
    });
  }

  /** One look at every followed job and credential; a feed with news reads it. */
  private async poll() {
    if (!this.feeds.size) {
      if (this.timer) clearInterval(this.timer);
      this.timer = null;
      return;
    }
    const now = Date.now();
    if (now - this.lastRecheckMs >= recheckMs) {
      this.lastRecheckMs = now;
      await this.recheckCredentials();
    }
    const maxLife: Follower[] = [];
    const keepalive: Follower[] = [];
    for (const f of this.live()) {
      if (now >= f.endsAtMs) maxLife.push(f);
      else if (now - f.lastWriteMs >= f.keepaliveAfterMs) keepalive.push(f);
    }
    await sliced(maxLife, (f) => f.end({ reason: 'max-life', detail: 'the stream reached its longest life; reconnect with Last-Event-ID' }));
    await sliced(keepalive, (f) => f.push({ comment: 'keepalive' }));
    const ids = [...this.feeds.keys()];
    for (let i = 0; i < ids.length; i += jobsPerQuery) {
      let rows: { id: string; status: string; exitCode: number | null; error: string | null; lastSeq: unknown }[];
      try {
        rows = await this.jobStates().execute({ ids: ids.slice(i, i + jobsPerQuery).join(',') });
      } catch {
        return; // the database is away for a moment: the next poll tries again
      }
      const found = new Map(rows.map((r) => [r.id, r]));
      for (const id of ids.slice(i, i + jobsPerQuery)) {
        const feed = this.feeds.get(id);
        if (!feed) continue;
        const row = found.get(id);
        const lastSeq = row?.lastSeq === null || row?.lastSeq === undefined ? -1 : toNumber(row.lastSeq);
        const end: LogStreamEnd | null = !row
          ? { reason: 'ended', status: 'unknown', exitCode: null, error: null }
          : isTerminal(row.status as never)
            ? { reason: 'ended', status: row.status, exitCode: row.exitCode, error: row.error }
            : null;
        const behind = [...feed.followers].some((f) => !f.ended && f.after < lastSeq);
        if (behind || end) void this.read(feed, end ? { end, lastSeq } : undefined);
      }
    }
  }

  // The poll's one statement, prepared once: one text parameter whatever the count (job ids hold no comma).
  private jobStatesQuery: ReturnType<LogFollowers['prepareJobStates']> | null = null;
  private jobStates() {
    return (this.jobStatesQuery ??= this.prepareJobStates());
  }
  private prepareJobStates() {
    return this.database.db
      .select({
        id: jobs.id,
        status: jobs.status,
        exitCode: jobs.exitCode,
        error: jobs.error,
        // In the same snapshot as the status: a job that ended has all its chunks under this seq.
        lastSeq: sql<unknown>`(select max(${jobLogs.seq}) from ${jobLogs} where ${jobLogs.jobId} = ${jobs.id})`,
      })
      .from(jobs)
      .where(sql`${jobs.id} = any(string_to_array(${sql.placeholder('ids')}, ','))`)
      .prepare('gantry_followed_jobs');
  }

  /** Every key that holds a stream open, read in one query; the streams of those that no longer hold end. */
  private async recheckCredentials() {
    const byKey = new Map<string, Follower[]>();
    for (const f of this.live()) {
      const list = byKey.get(f.req.keyId);
      if (list) list.push(f);
      else byKey.set(f.req.keyId, [f]);
    }
    let refused: Map<string, ApiError>;
    try {
      refused = await this.credentials.refusals([...byKey.keys()]);
    } catch {
      return; // the database is away for a moment: the next re-check tries again
    }
    for (const [keyId, err] of refused) {
      const reason = /expired/.test(err.message) ? 'expired' : 'revoked';
      await sliced(byKey.get(keyId) ?? [], (f) => f.end({ reason, detail: err.message }));
    }
  }

  /**
   * Reads the feed's chunks after its slowest follower and hands each follower what it lacks.
   * A batch read from position R goes to the followers that have everything up to R, so no one
   * sees a gap; the others get it on the next read, which starts from them. With `end`, the job
   * has ended with lastSeq as its last chunk: followers that have it all get the end event.
   */
  private async read(feed: Feed, ending?: { end: LogStreamEnd; lastSeq: number }): Promise<void> {
    if (feed.reading) {
      feed.readAgain = true;
      if (ending) feed.ending = ending;
      return;
    }
    feed.reading = true;
    if (ending) feed.ending = ending;
    try {
      for (;;) {
        feed.readAgain = false;
        const live = [...feed.followers].filter((f) => !f.ended);
        if (!live.length) return;
        const from = Math.min(...live.map((f) => f.after));
        let items: LogBatch[] = [];
        try {
          items = await readChunks(this.database.db, feed.jobId, from, batchLines);
        } catch {
          return;
        }
        const receivers: Follower[] = [];
        // Each chunk is serialized once, whoever gets it.
        const data = items.map((item) => JSON.stringify(item));
        await sliced([...feed.followers], (f) => {
          if (f.ended || f.after < from) return;
          let got = false;
          for (let k = 0; k < items.length; k++) {
            const seq = items[k]!.seq;
            if (seq <= f.after) continue;
            f.push({ event: 'log', id: String(seq), data: data[k]! });
            f.after = seq;
            got = true;
          }
          if (f.queue.length > maxQueuedEvents) f.end({ reason: 'lagging', detail: 'the client reads slower than the log grows; reconnect with Last-Event-ID' });
          else if (got) receivers.push(f);
        });
        const done = feed.ending;
        if (done) await sliced([...feed.followers], (f) => !f.ended && f.after >= done.lastSeq && f.end(done.end));
        if (items.length) {
          // The slowest writer paces the reads, for a while: one stuck client does not hold the rest.
          await Promise.race([Promise.all(receivers.map((f) => f.drained())), new Promise((r) => setTimeout(r, drainWaitMs))]);
          continue;
        }
        if (!feed.readAgain) return;
      }
    } finally {
      feed.reading = false;
    }
  }
}

/** Runs fn on each item, writesPerTurn of them per event-loop turn: what is queued behind (heartbeats) runs in between. */
async function sliced<T>(items: T[], fn: (item: T) => unknown): Promise<void> {
  for (let i = 0; i < items.length; i++) {
    if (i && i % writesPerTurn === 0) await nextTurn();
    fn(items[i]!);
  }
}
