import { and, asc, eq, gt, sql } from 'drizzle-orm';
import type { LogBatch, LogChunk } from '../../shared/logs.ts';
import type { Db, DbOrTx } from '../db/open.ts';
import { jobLogs, jobs } from '../db/schema/index.ts';
import { ApiError } from '../errors.ts';
import { getOwnJob, recordEvent } from '../jobs/lifecycle.ts';
import { requireLiveLease } from './lease.ts';

/** Room over the per-job cap for the agent's own lines (the one saying how much it dropped). */
export const systemLineAllowanceBytes = 64 * 1024;

/** The in-process topic a stored chunk is announced on, for followers on this replica. */
export const logTopic = (jobId: string) => `logs:${jobId}`;

/**
 * Stores one chunk the agent shipped. A retry of a stored (job, seq) with the same lines changes
 * nothing and answers stored: false. A different chunk under a taken seq (an agent restarted
 * mid-job and numbers from 0 again) is not stored either: the answer names the next free seq,
 * and the agent renumbers from there. Past the job's cap only the agent's system lines are taken.
 */
export async function appendChunk(
  db: Db,
  nodeId: string,
  jobId: string,
  chunk: LogChunk,
  capBytes: number,
): Promise<{ stored: boolean; nextSeq?: number }> {
  const text = chunk.lines.join('\n');
  const bytes = Buffer.byteLength(text);
  return db.transaction(async (tx) => {
    await requireLiveLease(tx, jobId, nodeId, chunk.epoch);
    const [same] = await tx
      .select({ stream: jobLogs.stream, text: jobLogs.text })
      .from(jobLogs)
      .where(and(eq(jobLogs.jobId, jobId), eq(jobLogs.seq, chunk.seq)));
    if (same) {
      if (same.stream === chunk.stream && same.text === text) return { stored: false };
      return { stored: false, nextSeq: await nextFreeSeq(tx, jobId) };
    }
    const [used] = await tx
      .select({ n: sql<unknown>`coalesce(sum(${jobLogs.bytes}), 0)` })
      .from(jobLogs)
      .where(eq(jobLogs.jobId, jobId));
    const limit = chunk.stream === 'system' ? capBytes + systemLineAllowanceBytes : capBytes;
    if (Number(used?.n ?? 0) + bytes > limit) {
      throw new ApiError('payload_too_large', `the job's log is over its ${capBytes}-byte cap`);
    }
    const inserted = await tx
      .insert(jobLogs)
      .values({ jobId, seq: chunk.seq, stream: chunk.stream, at: new Date(chunk.at), lines: chunk.lines.length, bytes, text })
      .onConflictDoNothing()
      .returning({ seq: jobLogs.seq });
    return { stored: inserted.length > 0 };
  });
}

async function nextFreeSeq(db: DbOrTx, jobId: string): Promise<number> {
  const [row] = await db
    .select({ n: sql<unknown>`coalesce(max(${jobLogs.seq}), -1)` })
    .from(jobLogs)
    .where(eq(jobLogs.jobId, jobId));
  return Number(row?.n ?? -1) + 1;
}

/** Chunks after `after`, whole, until `limit` lines are reached (at least one chunk). */
export async function readChunks(db: DbOrTx, jobId: string, after: number, limit: number): Promise<LogBatch[]> {
  // Chunks hold up to 10,000 lines, so a page of `limit` lines needs at most `limit` chunks.
  const rows = await db
    .select()
    .from(jobLogs)
    .where(and(eq(jobLogs.jobId, jobId), gt(jobLogs.seq, after)))
    .orderBy(asc(jobLogs.seq))
    .limit(Math.min(limit, 1000));
  const out: LogBatch[] = [];
  let lines = 0;
  for (const row of rows) {
    if (out.length && lines + row.lines > limit) break;
    out.push({ seq: row.seq, stream: row.stream, at: row.at.toISOString(), text: `${row.text}\n` });
    lines += row.lines;
  }
  return out;
}

/** A page of a job's log for its owner; another tenant's job is not found. */
export async function readOwnLog(db: Db, accountId: string, jobId: string, after: number, limit: number) {
  const job = await getOwnJob(db, accountId, jobId);
  const items = await readChunks(db, jobId, after, limit);
  return { job, items };
}

/** A progress note from the agent (an image pull, say) in the job's events, fenced by the lease. */
export async function recordProgress(db: Db, nodeId: string, jobId: string, epoch: number, message: string, at: Date) {
  await db.transaction(async (tx) => {
    const job = await requireLiveLease(tx, jobId, nodeId, epoch);
    await recordEvent(tx, jobId, job.status, message, at);
  });
}

/** What a log follower needs to know to end: the job's status, exit code and error. */
export async function jobEndState(db: DbOrTx, jobId: string) {
  const [row] = await db
    .select({ status: jobs.status, exitCode: jobs.exitCode, error: jobs.error })
    .from(jobs)
    .where(eq(jobs.id, jobId));
  return row ?? null;
}
