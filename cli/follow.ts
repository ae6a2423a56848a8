import { setTimeout as sleep } from 'node:timers/promises';
import { backoffDelay } from '../shared/backoff.ts';
import type { ApiClient } from '../shared/client.ts';
import { ApiRequestError } from '../shared/client.ts';
import { isTerminal, type Job } from '../shared/jobs.ts';
import { LogBatch, LogStreamEnd, resumableEnds } from '../shared/logs.ts';
import { expectOk, getJob, serverSentEvents } from './api.ts';
import type { Context } from './command.ts';
import { printable } from './output.ts';
import { formatDuration } from './units.ts';

// Following a job: its state on a spinner while it waits (queued → leased → running, with the
// reason it waits), then its logs as they come, until it ends.

const pollMs = 1000;

function safeJson(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return null;
  }
}

export function describeWait(job: Job, now = Date.now()): string {
  const since = (iso: string | null) => (iso ? ` ${formatDuration((now - Date.parse(iso)) / 1000)}` : '');
  switch (job.status) {
    case 'queued':
      return `${job.id} queued${since(job.createdAt)}${job.pendingReason ? `: ${job.pendingReason}` : ', waiting for a node'}`;
    case 'leased':
      return `${job.id} leased to ${job.nodeId ?? 'a node'}, starting${since(job.leasedAt)}`;
    case 'running':
      return `${job.id} running on ${job.nodeId ?? 'a node'}${since(job.startedAt)}`;
    default:
      return `${job.id} ${job.status}`;
  }
}

/** The line that closes a followed job (its error is the node's text, made printable). */
/** A job array's tasks in a line: "7 tasks: 5 succeeded, 1 failed, 1 running". */
export function taskSummary(tasks: NonNullable<Job['tasks']>): string {
  const parts = (['succeeded', 'failed', 'cancelled', 'running', 'leased', 'queued'] as const).filter((s) => tasks[s] > 0).map((s) => `${tasks[s]} ${s}`);
  return `${tasks.count} task${tasks.count === 1 ? '' : 's'}: ${parts.join(', ')}`;
}

export function describeEnd(job: Job): string {
  const took = job.startedAt && job.finishedAt ? ` in ${formatDuration((Date.parse(job.finishedAt) - Date.parse(job.startedAt)) / 1000)}` : '';
  if (job.tasks) return `${job.id} ${job.status}${took} (${taskSummary(job.tasks)})`;
  if (job.status === 'succeeded') return `${job.id} succeeded${took}`;
  const code = job.exitCode !== null ? ` with exit code ${job.exitCode}` : '';
  const why = job.error ? `: ${printable(job.error)}` : '';
  return `${job.id} ${job.status}${code}${took}${why}`;
}

/** What `--follow` exits with: the job's own exit code, else 0 for success and 1 for anything else. */
export function jobExitCode(job: Job): number {
  if (job.exitCode !== null && job.exitCode >= 0 && job.exitCode <= 255) return job.exitCode;
  return job.status === 'succeeded' ? 0 : 1;
}

/**
 * Writes a chunk where it belongs: the job's stdout to ours, its stderr and system lines to our
 * stderr. Raw, it is written as the node sent it; otherwise only its colours, tabs, carriage
 * returns and newlines reach the terminal.
 */
export function writeBatch(ctx: Context, batch: Pick<LogBatch, 'stream' | 'text'>, raw = false) {
  const text = raw ? batch.text : printable(batch.text, 'log');
  if (!text) return;
  if (batch.stream === 'stdout') ctx.stdout.write(text);
  else if (batch.stream === 'stderr') ctx.stderr.write(text);
  else ctx.stderr.write(ctx.err.paint('dim', text));
}

/**
 * Streams the job's logs (GET /v1/jobs/:id/logs?follow=1, server-sent events) until the stream
 * ends or the signal fires. Returns false where this coordinator has no log endpoint.
 */
async function streamLogs(ctx: Context, api: ApiClient, jobId: string, signal: AbortSignal, raw: boolean, onOutput: () => void): Promise<boolean> {
  let lastId: string | undefined;
  // The seq of the last chunk shown: a reconnect asks for what comes after it.
  let seen = -1;
  for (let attempt = 0; !signal.aborted; attempt++) {
    let res: Response;
    try {
      res = await api.raw('GET', `/v1/jobs/${jobId}/logs?follow=1${seen >= 0 ? `&cursor=${seen}` : ''}`, {
        headers: { accept: 'text/event-stream', ...(lastId ? { 'last-event-id': lastId } : {}) },
        signal,
        timeoutMs: 24 * 3600_000,
      });
      if (res.status === 429) {
        // Too many streams open for this key right now: wait as told, the job goes on.
        const retryAfter = Number(res.headers.get('retry-after'));
        await res.body?.cancel();
        await sleep(retryAfter > 0 ? retryAfter * 1000 : 10_000, undefined, { signal }).catch(() => {});
        continue;
      }
      await expectOk(res);
    } catch (err) {
      if (signal.aborted) return true;
      if (err instanceof ApiRequestError && err.problem?.code === 'no_route') return false;
      if (err instanceof ApiRequestError && err.status < 500) throw err;
      // A dropped connection or a restarting coordinator: try again, the job goes on.
      await sleep(backoffDelay(attempt + 1, { initialMs: 500, maxMs: 10_000 }), undefined, { signal }).catch(() => {});
      continue;
    }
    try {
      let end: 'final' | 'resume' | null = null;
      for await (const ev of serverSentEvents(res.body!)) {
        if (ev.id !== undefined) lastId = ev.id;
        if (ev.event === 'end') {
          // The stream's longest life, a slow reader, a restarting coordinator: resume from the last id at once.
          const why = LogStreamEnd.safeParse(safeJson(ev.data));
          end = why.success && resumableEnds.includes(why.data.reason) ? 'resume' : 'final';
          break;
        }
        if (ev.event !== 'log') continue;
        const batch = LogBatch.safeParse(safeJson(ev.data));
        // A reconnect may replay chunks already shown.
        if (!batch.success || batch.data.seq <= seen) continue;
        seen = batch.data.seq;
        onOutput();
        writeBatch(ctx, batch.data, raw);
      }
      if (end === 'final') return true;
      if (end === 'resume') {
        attempt = -1;
        continue;
      }
      // Closed without an end event: the coordinator went away; try again shortly.
      await sleep(500, undefined, { signal }).catch(() => {});
      attempt = -1;
    } catch {
      if (signal.aborted) return true;
      attempt = 0;
    }
  }
  return true;
}

/**
 * Follows a job to its end, showing its state while it waits and (with logs) its output, and
 * returns the ended job. Ctrl-C stops following, not the job.
 */
export async function followJob(ctx: Context, api: ApiClient, jobId: string, opts: { logs: boolean; raw?: boolean }): Promise<Job> {
  const progress = ctx.progress();
  let outputStarted = false;
  let ended: Job | null = null;
  const stopLogs = new AbortController();
  const signal = AbortSignal.any([ctx.signal, stopLogs.signal]);

  const logs = opts.logs
    ? streamLogs(ctx, api, jobId, signal, opts.raw ?? false, () => {
        if (!outputStarted) progress.stop();
        outputStarted = true;
      })
    : Promise.resolve(false);
  let logsDone = false;
  let logsSupported = true;
  void logs.then(
    (supported) => {
      logsDone = true;
      logsSupported = supported;
    },
    () => {
      logsDone = true;
    },
  );

  try {
    let warnedNoLogs = false;
    while (!ctx.signal.aborted) {
      const job = await getJob(api, jobId, ctx.signal);
      if (isTerminal(job.status)) {
        ended = job;
        break;
      }
      if (!outputStarted) progress.update(describeWait(job), `${job.status} ${job.nodeId} ${job.pendingReason}`);
      if (opts.logs && logsDone && !logsSupported && !warnedNoLogs) {
        warnedNoLogs = true;
        progress.stop();
        ctx.stderr.write('this coordinator does not stream logs; showing the job state only\n');
      }
      await sleep(pollMs, undefined, { signal: ctx.signal }).catch(() => {});
    }
    if (!ended) throw new DOMException('interrupted', 'AbortError');
    // The log stream closes by itself at the job's end; give the last chunks a moment to arrive.
    const deadline = Date.now() + 5000;
    while (opts.logs && !logsDone && Date.now() < deadline) await sleep(100);
    return ended;
  } finally {
    stopLogs.abort();
    await logs.catch(() => {});
    progress.stop();
  }
}
