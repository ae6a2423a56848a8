import { and, eq, inArray, sql } from 'drizzle-orm';
import type { JobStatus } from '../../shared/jobs.ts';
import type { FinishReport, OutcomeReason } from '../../shared/leases.ts';
import type { DbOrTx } from '../db/open.ts';
import { gpus, jobEvents, jobs, nodes } from '../db/schema/index.ts';
import { ApiError } from '../errors.ts';
// The rule of which nodes take work, kept with its other forms in the scheduler's rules table.
import { takesWork, withinMaxParallel } from '../scheduler/rules.ts';
import { specOf, taskLeftNode } from './arrays.ts';
import { changeStatus, type JobRow } from './lifecycle.ts';
import { meter } from './metering.ts';
import { LedgerRefused, applyTransfers } from '../ledger/ledger.ts';
import { billableEnd, holdTransfer, noHold, settleLease, type LeaseHold } from '../ledger/leases.ts';

// The job-side transitions of a lease: placement (in bulk, for the scheduler), the agent's
// reports, and every way a job leaves its node (expiry, lost GPU, its own end). Each one frees or
// takes the node's capacity in the same transaction and raises the lease epoch, so a stale
// holder never matches again. Lock order everywhere: the node row, then the job row.

export const liveStatuses = ['leased', 'running'] as const satisfies readonly JobStatus[];

/** What a lease holder no longer carries once the job is off its node and back in the queue. */
const offNode = {
  nodeId: null,
  gpuIds: null,
  leaseId: null,
  leaseExpiresAt: null,
  leaseTokenExpiresAt: null,
  priceGpuHourMicros: null,
  priceCpuHourMicros: null,
  leasedAt: null,
  startedAt: null,
  pendingReason: null,
  ...noHold,
} as const;

// ---------------------------------------------------------------------------------------------
// Placement

/** One job placed on one node by the scheduler. */
export interface Placement {
  jobId: string;
  nodeId: string;
  gpuIds: string[];
  leaseId: string;
  cpuMillis: number;
  memoryMb: number;
  diskMb: number;
  priceGpuHourMicros: number;
  priceCpuHourMicros: number;
  /** For a task of a job array: the array (its row counts the leases its tasks hold). */
  arrayId?: string | null;
  /** The client's credit the lease holds (coordinator/ledger/leases.ts); absent for work that costs nothing. */
  hold?: { hold: LeaseHold; clientId: string; providerId: string } | null;
}

/** A placement batch did not apply as planned: the whole transaction rolls back and is retried. */
export class PlacementConflict extends Error {}

/** A timestamp parameter both drivers read the same (postgres.js under drizzle takes no Date in raw SQL). */
export const ts = (d: Date) => sql`${d.toISOString()}::timestamptz`;

/**
 * Commits a batch of placements in the caller's transaction, or throws PlacementConflict when
 * anything moved under the plan (a job no longer queued, a GPU taken or gone, a node gone offline,
 * draining or repriced); a CHECK violation on the node's allocation throws as well. The caller
 * rolls back and plans again: nothing of a failed batch is committed.
 */
export async function leaseJobs(tx: DbOrTx, batch: Placement[], expiresAt: Date, at: Date): Promise<Map<string, number>> {
  if (!batch.length) return new Map();
  // Each statement takes its rows as one JSON parameter (jsonb_to_recordset): thousands of rows
  // cost one bind, not thousands of parameters.
  const json = (rows: unknown[]) => sql`${JSON.stringify(rows)}::jsonb`;
  // Nodes first (the lock order), each with the sum of what the batch takes from it.
  const perNode = new Map<string, { id: string; cpu: number; mem: number; disk: number; pg: number; pc: number }>();
  for (const p of batch) {
    const n = perNode.get(p.nodeId) ?? { id: p.nodeId, cpu: 0, mem: 0, disk: 0, pg: p.priceGpuHourMicros, pc: p.priceCpuHourMicros };
    n.cpu += p.cpuMillis;
    n.mem += p.memoryMb;
    n.disk += p.diskMb;
    perNode.set(p.nodeId, n);
  }
  const nodeRows = [...perNode.values()].sort((a, b) => (a.id < b.id ? -1 : 1));
  const updatedNodes = await rows(
    tx,
    sql`update ${nodes} set
          allocated_cpu_millis = ${nodes}.allocated_cpu_millis + v.cpu,
          allocated_memory_mb = ${nodes}.allocated_memory_mb + v.mem,
          allocated_disk_mb = ${nodes}.allocated_disk_mb + v.disk,
          last_placed_at = ${ts(at)}
        from jsonb_to_recordset(${json(nodeRows)}) as v(id text, cpu int, mem int, disk int, pg bigint, pc bigint)
        where ${nodes}.id = v.id and ${takesWork.sql('nodes')}
          and ${nodes}.price_gpu_hour_micros = v.pg and ${nodes}.price_cpu_hour_micros = v.pc
        returning ${nodes}.id`,
  );
  if (updatedNodes.length !== nodeRows.length) throw new PlacementConflict('a node went offline, stopped taking work or changed its prices');

  const gpuRows = batch.flatMap((p) => p.gpuIds.map((g) => ({ n: p.nodeId, g, j: p.jobId })));
  if (gpuRows.length) {
    const taken = await rows(
      tx,
      sql`update ${gpus} set job_id = v.j
          from jsonb_to_recordset(${json(gpuRows)}) as v(n text, g text, j text)
          where ${gpus}.node_id = v.n and ${gpus}.id = v.g and ${gpus}.job_id is null
          returning ${gpus}.id`,
    );
    if (taken.length !== gpuRows.length) throw new PlacementConflict('a GPU was taken or is gone');
  }

  const jobRows = batch.map((p) => ({
    id: p.jobId,
    n: p.nodeId,
    g: p.gpuIds,
    l: p.leaseId,
    pg: p.priceGpuHourMicros,
    pc: p.priceCpuHourMicros,
    h: p.hold?.hold.holdId ?? null,
    hm: p.hold?.hold.micros ?? null,
    hu: p.hold?.hold.heldUntil?.toISOString() ?? null,
    ba: p.hold?.hold.billAt?.toISOString() ?? null,
    lb: p.hold ? 0 : null,
    fb: p.hold?.hold.feeBasisPoints ?? null,
  }));
  const leased = await rows<{ id: string; lease_epoch: unknown }>(
    tx,
    sql`update ${jobs} set
          status = 'leased', node_id = v.n, gpu_ids = v.g, lease_id = v.l,
          lease_epoch = ${jobs}.lease_epoch + 1, lease_expires_at = ${ts(expiresAt)}, lease_token_expires_at = null,
          attempts = ${jobs}.attempts + 1, price_gpu_hour_micros = v.pg, price_cpu_hour_micros = v.pc,
          leased_at = ${ts(at)}, started_at = null, pending_reason = null, updated_at = ${ts(at)},
          hold_id = v.h, hold_micros = v.hm, held_until = v.hu, bill_at = v.ba, lease_billed_micros = v.lb,
          lease_seen_at = ${ts(at)}, credit_short_at = null, fee_basis_points = v.fb
        from jsonb_to_recordset(${json(jobRows)}) as v(id text, n text, g jsonb, l text, pg bigint, pc bigint,
          h text, hm bigint, hu timestamptz, ba timestamptz, lb bigint, fb int)
        where ${jobs}.id = v.id and ${jobs}.status = 'queued'
        returning ${jobs}.id, ${jobs}.lease_epoch`,
  );
  if (leased.length !== batch.length) throw new PlacementConflict('a job left the queue (cancelled, or placed by another scheduler)');
  await takeArraySlots(tx, batch, at);

  // The holds last, after nodes and jobs (the lock order), ledger accounts in id order.
  const holds = batch.flatMap((p) =>
    p.hold ? [holdTransfer(p.hold.hold, { clientId: p.hold.clientId, providerId: p.hold.providerId, jobId: p.jobId, leaseId: p.leaseId, nodeId: p.nodeId })] : [],
  );
  try {
    await applyTransfers(tx, holds, at);
  } catch (err) {
    // Credit spent meanwhile (another coordinator, a renewal): plan again on fresh balances.
    if (err instanceof LedgerRefused) throw new PlacementConflict(`a client's credit no longer covers its hold: ${err.message}`);
    throw err;
  }

  const events = batch.map((p) => ({ j: p.jobId, r: `leased to ${p.nodeId}${p.gpuIds.length ? ` (GPUs ${p.gpuIds.join(', ')})` : ''}` }));
  await tx.execute(
    sql`insert into ${jobEvents} (job_id, from_status, to_status, reason, created_at)
        select v.j, 'queued', 'leased', v.r, ${ts(at)} from jsonb_to_recordset(${json(events)}) as v(j text, r text)`,
  );
  return new Map(leased.map((r) => [r.id, Number(r.lease_epoch)]));
}

/**
 * Raises each array's count of leased tasks by what the batch takes of it, guarded by its
 * maxParallel (rules.ts withinMaxParallel) under the array row's lock: two schedulers placing
 * tasks of one array at once cannot pass it together. An array's first lease starts it.
 */
async function takeArraySlots(tx: DbOrTx, batch: Placement[], at: Date): Promise<void> {
  const perArray = new Map<string, number>();
  for (const p of batch) if (p.arrayId) perArray.set(p.arrayId, (perArray.get(p.arrayId) ?? 0) + 1);
  if (!perArray.size) return;
  const taken = [...perArray].sort(([a], [b]) => (a < b ? -1 : 1)).map(([id, n]) => ({ id, n }));
  const json = sql`${JSON.stringify(taken)}::jsonb`;
  const updated = await rows<{ id: string; started: boolean }>(
    tx,
    sql`with v as (select * from jsonb_to_recordset(${json}) as v(id text, n int)),
        before as (select p.id, p.status from ${jobs} p join v on v.id = p.id order by p.id for update of p)
        update ${jobs} p set tasks_active = p.tasks_active + v.n,
          status = case when p.status = 'queued' then 'running' else p.status end,
          leased_at = coalesce(p.leased_at, ${ts(at)}), started_at = coalesce(p.started_at, ${ts(at)}), updated_at = ${ts(at)}
        from v, before where p.id = v.id and before.id = v.id and ${withinMaxParallel.sql('p', sql`v.n`)}
        returning p.id, before.status = 'queued' as started`,
  );
  if (updated.length !== taken.length) throw new PlacementConflict("an array's tasks would pass its maxParallel");
  const started = updated.filter((u) => u.started);
  if (started.length) {
    await tx.execute(
      sql`insert into ${jobEvents} (job_id, from_status, to_status, reason, created_at)
          select v.id, 'queued', 'running', 'its first task was leased', ${ts(at)} from jsonb_to_recordset(${JSON.stringify(started)}::jsonb) as v(id text)`,
    );
  }
}

async function rows<T = Record<string, unknown>>(tx: DbOrTx, query: ReturnType<typeof sql>): Promise<T[]> {
  const result = (await tx.execute(query)) as unknown as T[] | { rows: T[] };
  return Array.isArray(result) ? [...result] : result.rows;
}

// ---------------------------------------------------------------------------------------------
// Taking a job off its node

/** Locks the job's node row, then the job row: the lock order every lease transition keeps. */
async function lockJobAndNode(tx: DbOrTx, jobId: string): Promise<JobRow | null> {
  for (let tries = 0; tries < 3; tries++) {
    const [peek] = await tx.select({ nodeId: jobs.nodeId }).from(jobs).where(eq(jobs.id, jobId));
    if (!peek) return null;
    if (peek.nodeId) await tx.select({ id: nodes.id }).from(nodes).where(eq(nodes.id, peek.nodeId)).for('update');
    const [job] = await tx.select().from(jobs).where(eq(jobs.id, jobId)).for('update');
    if (!job) return null;
    if (job.nodeId === peek.nodeId) return job;
    // It moved between the two reads: lock the node it is on now.
  }
  throw new ApiError('unavailable', 'the job keeps moving; try again');
}

type NodeCounter = 'jobsSucceeded' | 'jobsFailed' | 'leaseExpiries';

/**
 * Frees what the job holds (its GPUs, its CPU and memory on the node), then moves it with its
 * event: epoch + 1, so whatever the old holder says next is stale.
 */
async function takeOffNode(
  tx: DbOrTx,
  job: JobRow,
  to: JobStatus,
  reason: string,
  patch: Parameters<typeof changeStatus>[5],
  at: Date,
  counter: NodeCounter | null,
  /** Up to when the lease is billed: the end the agent reported, or the last heartbeat that renewed it. */
  usedUntil: Date,
): Promise<JobRow> {
  // The lease's money first (after the node and job rows, before nothing else is locked): post what was used, void the rest.
  const cost = await settleLease(tx, job, usedUntil, at);
  patch = { ...patch, ...noHold, ...(cost === null ? {} : { costMicros: cost }) };
  if (job.nodeId) {
    await tx.update(gpus).set({ jobId: null }).where(eq(gpus.jobId, job.id));
    await tx
      .update(nodes)
      .set({
        allocatedCpuMillis: sql`${nodes.allocatedCpuMillis} - ${job.cpuMillis}`,
        allocatedMemoryMb: sql`${nodes.allocatedMemoryMb} - ${job.memoryMb}`,
        allocatedDiskMb: sql`${nodes.allocatedDiskMb} - ${job.diskMb}`,
        ...(counter ? { [counter]: sql`${nodes[counter]} + 1` } : {}),
      })
      .where(eq(nodes.id, job.nodeId));
  }
  const row = await changeStatus(tx, job.id, liveStatuses, to, reason, { ...patch, leaseEpoch: job.leaseEpoch + 1 }, at);
  if (!row) throw new Error(`job ${job.id} was not live when it was taken off its node`);
  if (row.parentId) await taskLeftNode(tx, row, at);
  return row;
}

/** Back to the queue, or failed when its placements are used up, or cancelled when its owner asked. */
async function requeueOrEnd(tx: DbOrTx, job: JobRow, why: string, at: Date, counter: NodeCounter | null, extra: Parameters<typeof changeStatus>[5] = {}) {
  // The node is gone or let go: billed up to its last heartbeat that renewed the lease.
  const seen = job.leaseSeenAt ?? job.leasedAt ?? at;
  if (job.cancelRequestedAt) {
    return takeOffNode(tx, job, 'cancelled', `${why}; cancelled as its owner asked`, { ...extra, finishedAt: at }, at, counter, seen);
  }
  if (job.creditShortAt) {
    // Out of credit: its lease ran out at what was held. Never re-queued: it would wait for credit again.
    const error = `credit: the client's credit ran out; the lease on ${job.nodeId} was not extended past what was held`;
    return takeOffNode(tx, job, 'failed', error, { ...extra, finishedAt: at, error }, at, counter, seen);
  }
  if (job.attempts >= job.maxAttempts) {
    const error = `${why}; all ${job.maxAttempts} attempts used`;
    return takeOffNode(tx, job, 'failed', error, { ...extra, finishedAt: at, error }, at, counter, seen);
  }
  return takeOffNode(tx, job, 'queued', `${why}; queued again (attempt ${job.attempts} of ${job.maxAttempts} used)`, { ...extra, ...offNode }, at, counter, seen);
}

/**
 * A lease the sweeper found past its expiry. Re-checked under the lock: a heartbeat may have
 * renewed it meanwhile. Returns the job as it left, or null when there was nothing to do.
 */
export async function expireLease(tx: DbOrTx, jobId: string, at: Date): Promise<JobRow | null> {
  const job = await lockJobAndNode(tx, jobId);
  if (!job || !(liveStatuses as readonly string[]).includes(job.status)) return null;
  if (!job.leaseExpiresAt || job.leaseExpiresAt.getTime() > at.getTime()) return null;
  return requeueOrEnd(tx, job, `the lease on ${job.nodeId} expired without a heartbeat`, at, 'leaseExpiries');
}

/**
 * Ends a live job's lease for a reason on the node's side (its GPU disappeared, the node was
 * retired): re-queued like an expiry, in the caller's transaction, which holds the node row.
 */
export async function endLeaseOnNode(tx: DbOrTx, jobId: string, why: string, at: Date): Promise<JobRow | null> {
  const job = await lockJobAndNode(tx, jobId);
  if (!job || !(liveStatuses as readonly string[]).includes(job.status)) return null;
  return requeueOrEnd(tx, job, why, at, null);
}

// ---------------------------------------------------------------------------------------------
// The agent's reports

/**
 * The job as a report from `nodeId` at `epoch` finds it, locked; refuses what is not this node's
 * to say: 404 for a job this node does not hold (as if it did not exist), 409 stale_lease for an
 * epoch that is no longer the job's.
 */
async function reportedJob(tx: DbOrTx, nodeId: string, jobId: string, epoch: number): Promise<JobRow> {
  const job = await lockJobAndNode(tx, jobId);
  // The holder first: another node's job must not answer with its epoch or status.
  if (!job || job.nodeId !== nodeId) throw new ApiError('not_found', 'job not found');
  if (job.leaseEpoch !== epoch) {
    throw new ApiError('stale_lease', `lease epoch ${epoch} is not the job's current one (${job.leaseEpoch}): nothing was changed`);
  }
  if (!(liveStatuses as readonly string[]).includes(job.status)) {
    throw new ApiError('stale_lease', `the job already ended ${job.status}: nothing was changed`);
  }
  return job;
}

/** POST /v1/agent/jobs/{id}/running: leased → running (again: nothing to do). */
export async function markRunning(tx: DbOrTx, nodeId: string, jobId: string, epoch: number, at: Date): Promise<JobRow> {
  const job = await reportedJob(tx, nodeId, jobId, epoch);
  if (job.status === 'running') return job;
  const row = await changeStatus(tx, jobId, ['leased'], 'running', `running on ${nodeId}`, { startedAt: at }, at);
  return row!;
}

/** What the agent measured, for the event: billing is metered from the lease, not from this. */
function describeUsage(r: FinishReport): string {
  const u = r.usage;
  if (!u) return '';
  const parts: string[] = [];
  if (u.wallSeconds !== undefined) parts.push(`ran ${u.wallSeconds.toFixed(1)} s`);
  if (u.cpuSeconds !== undefined) parts.push(`CPU ${u.cpuSeconds.toFixed(1)} s`);
  if (u.maxMemoryMb !== undefined) parts.push(`peak memory ${Math.round(u.maxMemoryMb)} MB`);
  return parts.length ? ` (${parts.join(', ')})` : '';
}

const failureReasons: readonly OutcomeReason[] = ['nonzero-exit', 'oom', 'disk', 'timeout'];

function describeOutcome(r: FinishReport): string {
  switch (r.reason) {
    case 'succeeded':
      return 'exited 0';
    case 'nonzero-exit':
      return `exited ${r.exitCode ?? '?'}`;
    case 'oom':
      return 'killed: out of memory';
    case 'disk':
      return 'stopped: wrote more than its disk budget';
    case 'timeout':
      return 'stopped: ran past its timeout';
    case 'cancelled':
      return 'stopped: cancelled';
    case 'error':
      return `could not run: ${r.error ?? 'runtime error'}`;
    case 'refused':
      return `the node refused the lease: ${r.error ?? 'it did not verify'}`;
  }
}

/**
 * POST /v1/agent/jobs/{id}/finish: the job's end as its node saw it. Usage and cost from lease
 * start to now at the prices recorded at lease are added to the job. The job's own failure ends
 * it failed unless its spec retries on that reason (and placements are left); a lease the node
 * refused goes back to the queue.
 */
export async function finishJob(tx: DbOrTx, nodeId: string, jobId: string, r: FinishReport, at: Date): Promise<JobRow> {
  const job = await reportedJob(tx, nodeId, jobId, r.epoch);
  const detail = describeOutcome(r) + describeUsage(r);
  const where = `on ${nodeId}`;
  const models = await tx.select({ model: gpus.model }).from(gpus).where(eq(gpus.jobId, jobId));
  // Billed up to the end it reports, never past what its lease held (or its timeout).
  const end = job.holdId ? billableEnd(job, at) : at;
  const metered = r.reason === 'refused' ? {} : meter(job, models.map((m) => m.model), end);
  const ended = {
    ...metered,
    finishedAt: at,
    exitCode: r.exitCode,
    error: r.reason === 'succeeded' ? null : (r.error ?? describeOutcome(r)),
  };
  if (r.reason === 'succeeded') {
    return takeOffNode(tx, job, 'succeeded', `${detail} ${where}`, ended, at, 'jobsSucceeded', end);
  }
  if (job.cancelRequestedAt || r.reason === 'cancelled') {
    return takeOffNode(tx, job, 'cancelled', `${detail} ${where}`, ended, at, null, end);
  }
  // A refused lease ran nothing: it costs nothing (its hold is voided).
  if (r.reason === 'refused') return requeueOrEnd(tx, { ...job, leaseSeenAt: job.leasedAt }, `${detail} ${where}`, at, null);
  const retry = failureReasons.includes(r.reason) && ((await specOf(tx, job)).retryOn ?? []).includes(r.reason as never);
  if (retry && job.attempts < job.maxAttempts) {
    const reason = `${detail} ${where}; retried as its spec asks on ${r.reason} (attempt ${job.attempts} of ${job.maxAttempts} used)`;
    return takeOffNode(tx, job, 'queued', reason, { ...offNode, ...metered, exitCode: r.exitCode, error: ended.error }, at, 'jobsFailed', end);
  }
  return takeOffNode(tx, job, 'failed', `${detail} ${where}`, ended, at, 'jobsFailed', end);
}

/** The jobs a node holds now, for the heartbeat and the work long-poll. */
export function liveOnNode(nodeId: string) {
  return and(eq(jobs.nodeId, nodeId), inArray(jobs.status, [...liveStatuses]));
}

export { rows as executeRows };
export { leaseCostMicros, meter } from './metering.ts';
