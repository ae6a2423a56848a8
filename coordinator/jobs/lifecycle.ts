import { and, desc, eq, inArray, isNull, lt, sql, type SQL } from 'drizzle-orm';
import { PgTransaction } from 'drizzle-orm/pg-core';
import { specDigest } from '../../shared/digest.ts';
import { newId } from '../../shared/ids.ts';
import { type Job, type JobSpec, type JobStatus, type ServiceStatus, type TaskCounts, isTerminal, MeteredUsage } from '../../shared/jobs.ts';
import { fromMicros, toMicros } from '../../shared/money.ts';
import type { Db, DbOrTx } from '../db/open.ts';
import { jobEvents, jobs, jobServices, queueReasons } from '../db/schema/index.ts';
import { ApiError, notFound } from '../errors.ts';
import { arrayUsage, cancelArray, eventsOf, isArray, specsOf, taskCounts, taskEnded } from './arrays.ts';
import { meterLive, type meter } from './metering.ts';

export type JobRow = typeof jobs.$inferSelect;
type JobPatch = Partial<Omit<typeof jobs.$inferInsert, 'id' | 'status'>>;

/**
 * The one way a job changes state: the update is guarded by the states it may leave from,
 * and its event is written in the same transaction. Returns null when the job was not in
 * one of `from` (someone else moved it first).
 */
export async function changeStatus(
  tx: DbOrTx,
  jobId: string,
  from: readonly JobStatus[],
  to: JobStatus,
  reason: string,
  patch: JobPatch = {},
  at = new Date(),
): Promise<JobRow | null> {
  const [before] = await tx
    .select({ status: jobs.status })
    .from(jobs)
    .where(and(eq(jobs.id, jobId), inArray(jobs.status, [...from])))
    .for('update');
  if (!before) return null;
  const [row] = await tx
    .update(jobs)
    .set({ ...patch, status: to, updatedAt: at })
    .where(eq(jobs.id, jobId))
    .returning();
  await tx.insert(jobEvents).values({ jobId, fromStatus: before.status, toStatus: to, reason, at });
  return row!;
}

/** An event that records something without a change of state (a cancel request, say). */
export async function recordEvent(tx: DbOrTx, jobId: string, status: JobStatus, reason: string, at = new Date()) {
  await tx.insert(jobEvents).values({ jobId, fromStatus: status, toStatus: status, reason, at });
}

/**
 * The submit statement: the job and its first event in one statement (a data-modifying CTE
 * is one transaction and one round trip), prepared once per database so that the hottest
 * write there is does not rebuild its SQL on every request.
 */
function prepareSubmit(db: Db) {
  const p = sql.placeholder;
  const inserted = db.$with('inserted').as(
    db
      .insert(jobs)
      .values({
        id: p('id'),
        accountId: p('accountId'),
        name: p('name'),
        spec: p('spec'),
        specDigest: p('specDigest'),
        status: 'queued',
        priority: p('priority'),
        cpuMillis: p('cpuMillis'),
        memoryMb: p('memoryMb'),
        diskMb: p('diskMb'),
        gpuCount: p('gpuCount'),
        gpuModel: p('gpuModel'),
        gpuMinMemoryMb: p('gpuMinMemoryMb'),
        maxPriceMicros: p('maxPriceMicros'),
        region: p('region'),
        maxAttempts: p('maxAttempts'),
        idempotencyKey: p('idempotencyKey'),
        createdAt: p('at'),
        updatedAt: p('at'),
      })
      .onConflictDoNothing({ target: [jobs.accountId, jobs.idempotencyKey] })
      .returning(),
  );
  const col = (c: { name: string }) => sql.identifier(c.name);
  const event = db.$with('event', {}).as(
    sql`insert into ${jobEvents} (${col(jobEvents.jobId)}, ${col(jobEvents.fromStatus)}, ${col(jobEvents.toStatus)}, ${col(jobEvents.reason)}, ${col(jobEvents.at)})
        select ${inserted.id}, null, 'queued', 'submitted', ${inserted.createdAt} from ${inserted}`,
  );
  return db.with(inserted, event).select().from(inserted).prepare('gantry_submit_job');
}
const submitStatements = new WeakMap<Db, ReturnType<typeof prepareSubmit>>();

/** Queues a job. With an Idempotency-Key this account already used, returns that job instead. */
export async function submitJob(
  db: Db,
  accountId: string,
  spec: JobSpec,
  idempotencyKey: string | undefined,
  at: Date,
): Promise<{ job: JobRow; replayed: boolean }> {
  let statement = submitStatements.get(db);
  if (!statement) submitStatements.set(db, (statement = prepareSubmit(db)));
  const digest = specDigest(spec);
  const [row] = await statement.execute({
    id: newId('job', at.getTime()),
    accountId,
    name: spec.name,
    spec,
    specDigest: digest,
    ...jobColumnsOf(spec),
    idempotencyKey: idempotencyKey ?? null,
    at,
  });
  if (row) return { job: row, replayed: false };
  return { job: await replayOf(db, accountId, idempotencyKey!, digest), replayed: true };
}

/** The columns a job's row takes from its spec (what the queue and the scheduler read without parsing it). */
export function jobColumnsOf(spec: JobSpec) {
  return {
    priority: spec.priority,
    cpuMillis: Math.round(spec.resources.cpu * 1000),
    memoryMb: spec.resources.memoryMb,
    diskMb: spec.resources.diskMb,
    gpuCount: spec.resources.gpus,
    gpuModel: spec.resources.gpu?.model ?? null,
    gpuMinMemoryMb: spec.resources.gpu?.minMemoryMb ?? null,
    maxPriceMicros: spec.maxPricePerHour === undefined ? null : toMicros(spec.maxPricePerHour),
    region: spec.constraints?.region ?? null,
    maxAttempts: spec.maxAttempts,
  };
}

/**
 * A submit whose Idempotency-Key this account already used: the job it made, if the spec is the
 * same (by digest); a conflict otherwise, or while that first submit is still being written.
 */
export async function replayOf(db: DbOrTx, accountId: string, idempotencyKey: string, digest: string): Promise<JobRow> {
  const [existing] = await db
    .select()
    .from(jobs)
    .where(and(eq(jobs.accountId, accountId), eq(jobs.idempotencyKey, idempotencyKey)));
  if (!existing) throw new ApiError('conflict', 'the job for this Idempotency-Key is being written; retry');
  if (existing.specDigest !== digest) {
    throw new ApiError('conflict', 'this Idempotency-Key was already used for a different job spec');
  }
  return existing;
}

/** A job as its owner sees it; another tenant's job is not found. */
export async function getOwnJob(db: DbOrTx, accountId: string, jobId: string): Promise<JobRow> {
  // Outside a transaction (a client's read: GET /v1/jobs/{id}, log follows) the read is a
  // prepared statement, one round trip where an unprepared one waits for a describe first: under
  // heartbeat load each round trip queues behind heartbeats for a connection (PITFALLS.md).
  const [row] =
    db instanceof PgTransaction
      ? await db
          .select({ job: jobs, shapeReason: queueReasons.reason })
          .from(jobs)
          .leftJoin(queueReasons, eq(queueReasons.shape, jobs.queueShape))
          .where(and(eq(jobs.id, jobId), eq(jobs.accountId, accountId)))
      : await ownJobQuery(db).execute({ jobId, accountId });
  if (!row) throw notFound('job');
  return withShapeReason(row);
}

const ownJobQueries = new WeakMap<object, ReturnType<typeof prepareOwnJob>>();
function ownJobQuery(db: Db) {
  let q = ownJobQueries.get(db);
  if (!q) ownJobQueries.set(db, (q = prepareOwnJob(db)));
  return q;
}
function prepareOwnJob(db: Db) {
  return db
    .select({ job: jobs, shapeReason: queueReasons.reason })
    .from(jobs)
    .leftJoin(queueReasons, eq(queueReasons.shape, jobs.queueShape))
    .where(and(eq(jobs.id, sql.placeholder('jobId')), eq(jobs.accountId, sql.placeholder('accountId'))))
    .prepare('gantry_own_job');
}

/** A queued job waits for the reason the scheduler keeps for its shape (queue_reasons), or its own. */
function withShapeReason(r: { job: JobRow; shapeReason: string | null }): JobRow {
  return r.job.status === 'queued' && r.shapeReason ? { ...r.job, pendingReason: r.shapeReason } : r.job;
}

export async function listJobs(
  db: DbOrTx,
  accountId: string,
  opts: { status?: JobStatus | undefined; limit: number; cursor?: string | undefined },
): Promise<{ items: JobRow[]; nextCursor: string | null }> {
  // Arrays, not their tasks (GET /v1/jobs/{id}/tasks lists those).
  const where: SQL[] = [eq(jobs.accountId, accountId), isNull(jobs.parentId)];
  if (opts.status) where.push(eq(jobs.status, opts.status));
  if (opts.cursor) where.push(lt(jobs.id, opts.cursor));
  const rows = await db
    .select({ job: jobs, shapeReason: queueReasons.reason })
    .from(jobs)
    .leftJoin(queueReasons, eq(queueReasons.shape, jobs.queueShape))
    .where(and(...where))
    .orderBy(desc(jobs.id))
    .limit(opts.limit + 1);
  const items = rows.slice(0, opts.limit).map(withShapeReason);
  return { items, nextCursor: rows.length > opts.limit ? items[items.length - 1]!.id : null };
}

/**
 * A queued job is cancelled at once. A leased or running one gets the request recorded; its
 * node hears of it in the next heartbeat answer and the job ends cancelled when it stops.
 */
export async function cancelJob(db: Db, accountId: string, jobId: string, at: Date): Promise<JobRow> {
  return db.transaction(async (tx) => {
    const job = await getOwnJob(tx, accountId, jobId);
    if (isTerminal(job.status)) throw new ApiError('conflict', `the job already ended ${job.status}`);
    if (isArray(job)) {
      await cancelArray(tx, job, at);
      return getOwnJob(tx, accountId, jobId);
    }
    if (job.status === 'queued') {
      const row = await changeStatus(tx, jobId, ['queued'], 'cancelled', 'cancelled by client', { finishedAt: at }, at);
      if (row?.parentId) await taskEnded(tx, row, at);
      if (row) return row;
      // The scheduler placed it meanwhile: fall through to a cancel request.
    }
    if (job.cancelRequestedAt) return job;
    const [row] = await tx
      .update(jobs)
      .set({ cancelRequestedAt: at, updatedAt: at })
      .where(and(eq(jobs.id, jobId), inArray(jobs.status, ['leased', 'running'])))
      .returning();
    if (!row) return getOwnJob(tx, accountId, jobId);
    await recordEvent(tx, jobId, row.status, 'cancel requested by client', at);
    return row;
  });
}

export async function listEvents(db: DbOrTx, accountId: string, jobId: string) {
  return eventsOf(db, await getOwnJob(db, accountId, jobId));
}

const iso = (d: Date | null) => (d ? d.toISOString() : null);

/**
 * The jobs as the API shows them. A job holding a lease is metered to `now` at its lease's
 * prices (its GPUs' models read in one query for all of them), so `cost` is what it costs so far.
 */
/** Where a service job answers (the coordinator's ServiceUrls); jobs without a service have no URL. */
export type ServiceUrlOf = (jobId: string) => string;

export async function toApiJobs(db: DbOrTx, rows: JobRow[], now: Date, serviceUrlOf: ServiceUrlOf): Promise<Job[]> {
  const arrays = rows.filter(isArray);
  const [metered, specs, counts, sums] = await Promise.all([meterLive(db, rows, now), specsOf(db, rows), taskCounts(db, arrays), arrayUsage(db, arrays, now)]);
  const served = rows.filter((r) => specs.get(r.id)!.service);
  const readiness = new Map<string, { epoch: number; readyAt: Date; requests: number }>();
  if (served.length) {
    const found = await db.select().from(jobServices).where(inArray(jobServices.jobId, served.map((r) => r.id)));
    for (const s of found) readiness.set(s.jobId, s);
  }
  return rows.map((r) => {
    const spec = specs.get(r.id)!;
    const service = spec.service ? { url: serviceUrlOf(r.id), ready: readiness.get(r.id) ?? null } : null;
    return toApiJob(r, spec, metered.get(r.id) ?? sums.get(r.id) ?? null, counts.get(r.id) ?? null, service);
  });
}

export async function toApiJobAt(db: DbOrTx, row: JobRow, now: Date, serviceUrlOf: ServiceUrlOf): Promise<Job> {
  const [job] = await toApiJobs(db, [row], now, serviceUrlOf);
  return job!;
}

/** A service job's state: ready only once the agent's probe passed under the job's current lease. */
export function serviceStatusOf(row: Pick<JobRow, 'status' | 'leaseEpoch'>, ready: { epoch: number; readyAt: Date; requests: number } | null): ServiceStatus {
  const requests = ready?.requests ?? 0;
  if (isTerminal(row.status)) return { state: 'stopped', readyAt: ready ? ready.readyAt.toISOString() : null, requests };
  if (row.status === 'running' && ready && ready.epoch === row.leaseEpoch) return { state: 'ready', readyAt: ready.readyAt.toISOString(), requests };
  return { state: 'starting', readyAt: null, requests };
}

/** The one mapping from a job row to the API's shape; `metered` is the live lease's usage and cost so far. */
function toApiJob(
  row: JobRow,
  spec: JobSpec,
  metered: ReturnType<typeof meter> | null,
  tasks: TaskCounts | null,
  service: { url: string; ready: { epoch: number; readyAt: Date; requests: number } | null } | null,
): Job {
  const recordedUsage = MeteredUsage.safeParse(row.usage);
  return {
    id: row.id,
    parentId: row.parentId,
    taskIndex: row.taskIndex,
    tasks,
    name: row.name,
    status: row.status,
    spec,
    attempts: row.attempts,
    maxAttempts: row.maxAttempts,
    priority: row.priority,
    nodeId: row.nodeId,
    gpuIds: row.gpuIds,
    leaseEpoch: row.leaseEpoch,
    pendingReason: row.status === 'queued' ? row.pendingReason : null,
    cancelRequestedAt: iso(row.cancelRequestedAt),
    createdAt: row.createdAt.toISOString(),
    updatedAt: row.updatedAt.toISOString(),
    leasedAt: iso(row.leasedAt),
    startedAt: iso(row.startedAt),
    finishedAt: iso(row.finishedAt),
    exitCode: row.exitCode,
    error: row.error,
    result: row.result ?? null,
    prices:
      row.priceGpuHourMicros === null || row.priceCpuHourMicros === null
        ? null
        : { perGpuHour: fromMicros(row.priceGpuHourMicros), perCpuHour: fromMicros(row.priceCpuHourMicros) },
    cost: fromMicros(metered?.costMicros ?? row.costMicros ?? 0),
    usage: metered?.usage ?? (recordedUsage.success ? recordedUsage.data : null),
    serviceUrl: service?.url ?? null,
    service: service ? serviceStatusOf(row, service.ready) : null,
  };
}
