import { Backoff } from '../../shared/backoff.ts';
import { maxChunkBytes, maxLinesPerChunk, type LogStream } from '../../shared/logs.ts';
import { LineSplitter } from './lines.ts';
import type { LogTransport, OutgoingChunk } from './transport.ts';

export interface LogShipperOptions {
  transport: LogTransport;
  /** Most bytes of lines this job may ship; past it lines are counted and dropped. */
  capBytes?: number;
  /** A chunk is sealed at this many bytes of text... */
  chunkBytes?: number;
  chunkLines?: number;
  /** ...or when its oldest line has waited this long, so a quiet job's last lines still go out. */
  flushMs?: number;
  /** Memory bound: past this many bytes waiting to be sent, write() asks its caller to wait. */
  maxQueuedBytes?: number;
  /** Backoff bounds between retries of a chunk the coordinator did not take. */
  retryMinMs?: number;
  retryMaxMs?: number;
  /** The agent's own log, for what goes wrong while shipping. */
  warn?: (msg: string, fields?: Record<string, unknown>) => void;
  now?: () => Date;
}

export interface LogShipperStats {
  shippedChunks: number;
  shippedLines: number;
  droppedLines: number;
  droppedBytes: number;
  /** Why nothing more is shipped (the lease is gone), if that happened. */
  stopped: string | null;
}

interface Pending {
  lines: string[];
  bytes: number;
  since: number;
}

interface Sealed {
  stream: LogStream;
  at: string;
  lines: string[];
  bytes: number;
  seq: number | null;
}

export const defaultLogCapBytes = 64 * 1024 * 1024;

/**
 * A job's output on its way to the coordinator: text per stream is split into lines, lines are
 * gathered into chunks of one stream (bounded in bytes, lines and age), and chunks are sent one
 * at a time, in order, each numbered once and retried under its number until the coordinator
 * takes it, so a retry is idempotent through (job, seq). Order is kept within each stream (the
 * engine keeps none between the two). Memory stays bounded: when maxQueuedBytes are waiting,
 * write() returns a promise, and the caller (reading the container's output) waits on it.
 */
export class LogShipper {
  private readonly o: Required<Omit<LogShipperOptions, 'warn'>> & Pick<LogShipperOptions, 'warn'>;
  private readonly splitters: Record<'stdout' | 'stderr', LineSplitter>;
  private readonly pending = new Map<LogStream, Pending>();
  private readonly queue: Sealed[] = [];
  private queuedBytes = 0;
  private acceptedBytes = 0;
  private nextSeq = 0;
  private capped = false;
  private closed = false;
  private sending: Promise<void> | null = null;
  private drainWaiters: (() => void)[] = [];
  private timer: NodeJS.Timeout;
  readonly stats: LogShipperStats = { shippedChunks: 0, shippedLines: 0, droppedLines: 0, droppedBytes: 0, stopped: null };

  constructor(opts: LogShipperOptions) {
    this.o = {
      capBytes: defaultLogCapBytes,
      chunkBytes: maxChunkBytes,
      chunkLines: maxLinesPerChunk,
      flushMs: 1000,
      maxQueuedBytes: 4 * 1024 * 1024,
      retryMinMs: 200,
      retryMaxMs: 5000,
      now: () => new Date(),
      ...opts,
    };
    this.splitters = {
      stdout: new LineSplitter((l) => this.addLine('stdout', l)),
      stderr: new LineSplitter((l) => this.addLine('stderr', l)),
    };
    this.timer = setInterval(() => this.sealOld(), Math.max(50, Math.floor(this.o.flushMs / 2)));
    this.timer.unref();
  }

  /** Output as it came from the job. Returns a promise when the caller should wait before more. */
  write(stream: 'stdout' | 'stderr', text: string): void | Promise<void> {
    if (this.closed || this.stats.stopped) return;
    this.splitters[stream].write(text);
    if (this.queuedBytes < this.o.maxQueuedBytes) return;
    return new Promise<void>((resolve) => this.drainWaiters.push(resolve));
  }

  /** A line of the agent's own about the job (image pull, restart), outside the job's cap. */
  system(line: string): void {
    if (this.closed) return;
    this.sealStream('system');
    this.pushPending('system', `[gantry] ${line}`);
    this.sealStream('system');
  }

  /**
   * Ends the job's output: the last partial lines, a line saying what the cap dropped, and
   * everything still waiting is sent. Resolves when the queue is empty, the lease is gone,
   * or the deadline passed (what is left then is counted as dropped).
   */
  async close(deadlineMs = 30_000): Promise<LogShipperStats> {
    if (!this.closed) {
      this.splitters.stdout.end();
      this.splitters.stderr.end();
      if (this.stats.droppedLines > 0) {
        this.pushPending(
          'system',
          `[gantry] output past the ${this.o.capBytes}-byte log cap was dropped: ${this.stats.droppedLines} lines, ${this.stats.droppedBytes} bytes`,
        );
      }
      this.closed = true;
      for (const s of ['stdout', 'stderr', 'system'] as const) this.sealStream(s);
      this.kick();
    }
    const deadline = Date.now() + deadlineMs;
    while (this.queue.length && !this.stats.stopped && Date.now() < deadline) {
      await Promise.race([this.sending ?? Promise.resolve(), sleep(Math.min(250, Math.max(1, deadline - Date.now())))]);
      this.kick();
    }
    clearInterval(this.timer);
    for (const c of this.queue.splice(0)) this.drop(c);
    this.wakeWriters(true);
    return this.stats;
  }

  private addLine(stream: 'stdout' | 'stderr', line: string) {
    const bytes = Buffer.byteLength(line) + 1;
    if (this.capped || this.stats.stopped || this.acceptedBytes + bytes > this.o.capBytes) {
      this.capped = this.capped || !this.stats.stopped;
      this.stats.droppedLines++;
      this.stats.droppedBytes += bytes;
      return;
    }
    this.acceptedBytes += bytes;
    this.pushPending(stream, line);
  }

  private pushPending(stream: LogStream, line: string) {
    const bytes = Buffer.byteLength(line) + 1;
    let p = this.pending.get(stream);
    if (p && (p.bytes + bytes > this.o.chunkBytes || p.lines.length >= this.o.chunkLines)) {
      this.sealStream(stream);
      p = undefined;
    }
    if (!p) {
      p = { lines: [], bytes: 0, since: Date.now() };
      this.pending.set(stream, p);
    }
    p.lines.push(line);
    p.bytes += bytes;
    this.queuedBytes += bytes;
  }

  private sealStream(stream: LogStream) {
    const p = this.pending.get(stream);
    if (!p || !p.lines.length) return;
    this.pending.delete(stream);
    this.queue.push({ stream, at: this.o.now().toISOString(), lines: p.lines, bytes: p.bytes, seq: null });
    this.kick();
  }

  private sealOld() {
    const now = Date.now();
    for (const [stream, p] of this.pending) if (now - p.since >= this.o.flushMs) this.sealStream(stream);
  }

  private kick() {
    if (this.sending || !this.queue.length || this.stats.stopped) return;
    this.sending = this.sendAll().finally(() => {
      this.sending = null;
      if (this.queue.length && !this.stats.stopped) this.kick();
    });
  }

  private async sendAll() {
    const backoff = new Backoff({ initialMs: this.o.retryMinMs, maxMs: this.o.retryMaxMs });
    while (this.queue.length && !this.stats.stopped) {
      const c = this.queue[0]!;
      if (c.seq === null) c.seq = this.nextSeq++;
      let outcome;
      try {
        outcome = await this.o.transport({ seq: c.seq, stream: c.stream, at: c.at, lines: c.lines } satisfies OutgoingChunk);
      } catch (err) {
        const retryInMs = backoff.next();
        this.o.warn?.('log chunk not delivered; retrying', { seq: c.seq, error: String((err as Error)?.message ?? err), retryInMs });
        await sleep(retryInMs);
        continue;
      }
      backoff.reset();
      switch (outcome.kind) {
        case 'stored':
          this.queue.shift();
          this.release(c);
          this.stats.shippedChunks++;
          this.stats.shippedLines += c.lines.length;
          break;
        case 'renumber':
          // Numbers below nextSeq belong to an earlier run of this agent: this chunk and the rest go after them.
          this.nextSeq = Math.max(this.nextSeq, outcome.nextSeq);
          c.seq = this.nextSeq++;
          break;
        case 'capped':
          if (c.stream === 'system') {
            this.queue.shift();
            this.drop(c);
          } else {
            this.capped = true;
            this.queue.shift();
            this.drop(c);
          }
          break;
        case 'rejected':
          this.o.warn?.('log chunk refused by the coordinator; dropped', { seq: c.seq, why: outcome.why });
          this.queue.shift();
          this.drop(c);
          break;
        case 'gone':
          this.stats.stopped = outcome.why;
          for (const d of this.queue.splice(0)) this.drop(d);
          this.pending.clear();
          this.wakeWriters(true);
          break;
      }
      this.wakeWriters(false);
    }
  }

  private release(c: Sealed) {
    this.queuedBytes -= c.bytes;
  }

  private drop(c: Sealed) {
    this.release(c);
    if (c.stream !== 'system') {
      this.stats.droppedLines += c.lines.length;
      this.stats.droppedBytes += c.bytes;
    }
  }

  private wakeWriters(all: boolean) {
    if (!all && this.queuedBytes > this.o.maxQueuedBytes / 2) return;
    for (const w of this.drainWaiters.splice(0)) w();
  }
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
