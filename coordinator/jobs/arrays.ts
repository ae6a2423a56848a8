import { and, eq, gt, inArray, isNull, or, sql, type SQL } from 'drizzle-orm';
import { randomUUID } from 'node:crypto';
import { canonicalDigest, canonicalJson, specDigest } from '../../shared/digest.ts';
import { newId } from '../../shared/ids.ts';
import { type JobSpec, type JobStatus, type MeteredUsage, type TaskCounts, isTerminal, jobStatuses, taskSpec } from '../../shared/jobs.ts';
import type { Db, DbOrTx } from '../db/open.ts';
import { toNumber } from '../db/open.ts';
import { jobEvents, jobs, type StoredSpec, type TaskSpecStub } from '../db/schema/index.ts';
import { ApiError } from '../errors.ts';
import { changeStatus, jobColumnsOf, recordEvent, replayOf, type JobRow } from './lifecycle.ts';
import { meterLive } from './metering.ts';
import { executeRows } from './transitions.ts';

// Job arrays: one submit of many tasks. The array is a job row with task_count and max_parallel,
// never placed itself: its status follows its tasks. Each task is a job row of its own (parent_id,
// task_index) keeping only a stub of the spec, which is stored once on the array's row. Lock order,
// as everywhere: a task's node, the task, then its array's row.

const openStatuses = ['queued', 'leased', 'running'] as const satisfies readonly JobStatus[];

/** Over `jobs` (or `alias`): the row is a job that runs (a plain job or a task), not an array. */
export const runsSql = (alias = 'jobs'): SQL => sql`(${sql.raw(alias)}.parent_id is not null or ${sql.raw(alias)}.task_count is null)`;

/** Whether the row is an array (the parent of tasks), not a job that runs. */
export const isArray = (row: Pick<JobRow, 'taskCount' | 'parentId'>) => row.taskCount !== null && row.parentId === null;

/** What a task's row keeps of the spec: the fields that queue_shape and the scheduler's queue read. */
export function taskStub(spec: JobSpec): TaskSpecStub {
  return {
    task: true,
    image: spec.image,
    network: spec.network,
    ...(spec.constraints ? { constraints: spec.constraints } : {}),
    resources: spec.resources.gpu ? { gpu: spec.resources.gpu } : {},
    timeoutSeconds: spec.timeoutSeconds,
  };
}

const isStub = (s: StoredSpec): s is TaskSpecStub => (s as TaskSpecStub).task === true;

/** The service a stored spec asks for: a task never has one (the spec refuses `service` with `tasks`). */
export const serviceOf = (s: StoredSpec): JobSpec['service'] => (isStub(s) ? undefined : s.service);

/** Arrays' specs by id: immutable once written, and large (per-task inputs), so read once. */
const arraySpecs = new Map<string, JobSpec>();
const arraySpecsKept = 256;

async function arraySpecsOf(db: DbOrTx, ids: string[]): Promise<Map<string, JobSpec>> {
  const out = new Map<string, JobSpec>();
  const missing: string[] = [];
  for (const id of new Set(ids)) {
    const s = arraySpecs.get(id);
    if (s) out.set(id, s);
    else missing.push(id);
  }
  if (missing.length) {
    const found = await db.select({ id: jobs.id, spec: jobs.spec }).from(jobs).where(inArray(jobs.id, missing));
    for (const r of found) {
      if (arraySpecs.size >= arraySpecsKept) arraySpecs.delete(arraySpecs.keys().next().value!);
      arraySpecs.set(r.id, r.spec as JobSpec);
      out.set(r.id, r.spec as JobSpec);
    }
  }
  return out;
}

type SpecSource = Pick<JobRow, 'id' | 'spec' | 'parentId' | 'taskIndex'>;

/** The specs of jobs as they run: a task's is its array's with its own inputs (taskSpec). */
export async function specsOf(db: DbOrTx, rows: readonly SpecSource[]): Promise<Map<string, JobSpec>> {
  const parents = await arraySpecsOf(db, rows.flatMap((r) => (r.parentId && isStub(r.spec) ? [r.parentId] : [])));
  const out = new Map<string, JobSpec>();
  for (const r of rows) {
    if (!r.parentId || !isStub(r.spec)) {
      out.set(r.id, r.spec as JobSpec);
      continue;
    }
    const parent = parents.get(r.parentId);
    if (!parent) throw new Error(`job ${r.id}: its array ${r.parentId} is gone`);
    out.set(r.id, taskSpec(parent, r.taskIndex!));
  }
  return out;
}

export async function specOf(db: DbOrTx, row: SpecSource): Promise<JobSpec> {
  return (await specsOf(db, [row])).get(row.id)!;
}

/** Each task's spec digest: one for all when no input differs per task. */
function taskDigests(spec: JobSpec): { one: string } | { each: string[] } {
  const count = spec.tasks!.count;
  if (!spec.inputs?.some((i) => i.perTask)) return { one: specDigest(taskSpec(spec, 0)) };
  // The canonical text differs only in the per-task digests: built around them once.
  const nonce = randomUUID();
  const marker = `"${nonce}-`;
  const template = canonicalJson({
    ...taskSpec(spec, 0),
    inputs: spec.inputs.map((i, k) => ({ digest: i.perTask ? `${nonce}-${k}` : i.digest, path: i.path })),
  });
  const parts = template.split(marker);
  const each: string[] = new Array(count);
  for (let t = 0; t < count; t++) {
    let text = parts[0]!;
    for (let p = 1; p < parts.length; p++) {
      const rest = parts[p]!;
      const k = Number(rest.slice(0, rest.indexOf('"')));
      text += `"${spec.inputs[k]!.perTask![t]}${rest.slice(rest.indexOf('"'))}`;
    }
    each[t] = canonicalDigest(text);
  }
  return { each };
}

/** Task ids: the array's time, a random part shared by its tasks, then the index (3 characters, in order). */
function taskIdPrefix(at: Date): string {
  return newId('job', at.getTime()).slice(0, -3);
}
const idAlphabet = '0123456789abcdefghjkmnpqrstvwxyz';

/**
 * Queues an array and all its tasks in one transaction: the array's row and its event, then every
 * task made by one statement from it (generate_series). An Idempotency-Key
 * covers the whole array: the same key again answers the array it made.
 */
export async function submitArray(
  db: Db,
  accountId: string,
  spec: JobSpec,
  idempotencyKey: string | undefined,
  at: Date,
): Promise<{ job: JobRow; replayed: boolean }> {
  const tasks = spec.tasks!;
  const digest = specDigest(spec);
  const digests = taskDigests(spec);
  const ts = sql`${at.toISOString()}::timestamptz`;
  const made = await db.transaction(async (tx) => {
    const [parent] = await tx
      .insert(jobs)
      .values({
        id: newId('job', at.getTime()),
        accountId,
        name: spec.name,
        spec,
        specDigest: digest,
        status: 'queued',
        ...jobColumnsOf(spec),
        idempotencyKey: idempotencyKey ?? null,
        taskCount: tasks.count,
        maxParallel: tasks.maxParallel ?? tasks.count,
        createdAt: at,
        updatedAt: at,
      })
      .onConflictDoNothing({ target: [jobs.accountId, jobs.idempotencyKey] })
      .returning();
    if (!parent) return null;
    const digestOf = 'one' in digests ? sql`${digests.one}::text` : sql`(${JSON.stringify(digests.each)}::jsonb ->> i)`;
    await tx.execute(sql`
      insert into ${jobs} (id, account_id, name, spec, spec_digest, status, priority, cpu_millis, memory_mb, disk_mb, gpu_count,
        gpu_model, gpu_min_memory_mb, max_price_micros, region, max_attempts, created_at, updated_at, parent_id, task_index, task_count)
      select ${taskIdPrefix(at)} || substr(${idAlphabet}, i / 1024 % 32 + 1, 1) || substr(${idAlphabet}, i / 32 % 32 + 1, 1) || substr(${idAlphabet}, i % 32 + 1, 1),
        p.account_id, p.name || '[' || i || ']', ${JSON.stringify(taskStub(spec))}::jsonb, ${digestOf}, 'queued', p.priority, p.cpu_millis,
        p.memory_mb, p.disk_mb, p.gpu_count, p.gpu_model, p.gpu_min_memory_mb, p.max_price_micros, p.region, p.max_attempts, ${ts}, ${ts},
        p.id, i, p.task_count
      from ${jobs} p, generate_series(0, p.task_count - 1) as i
      where p.id = ${parent.id}`);
    // One event for all: a task's events begin with its array's (listEvents), not with 10,000 copies.
    await recordSubmit(tx, parent.id, `submitted: an array of ${tasks.count} tasks, at most ${tasks.maxParallel ?? tasks.count} at once`, at);
    return parent;
  });
  if (made) return { job: made, replayed: false };
  return { job: await replayOf(db, accountId, idempotencyKey!, digest), replayed: true };
}

// ---------------------------------------------------------------------------------------------
// Counts and status

const zeroCounts = (count: number, maxParallel: number): TaskCounts => ({
  count,
  maxParallel,
  queued: 0,
  leased: 0,
  running: 0,
  succeeded: 0,
  failed: 0,
  cancelled: 0,
});

/** The arrays' tasks by status, in one query. */
export async function taskCounts(db: DbOrTx, arrays: readonly Pick<JobRow, 'id' | 'taskCount' | 'maxParallel'>[]): Promise<Map<string, TaskCounts>> {
  const out = new Map(arrays.map((a) => [a.id, zeroCounts(a.taskCount ?? 0, a.maxParallel ?? a.taskCount ?? 0)]));
  if (!arrays.length) return out;
  const found = await db
    .select({ parentId: jobs.parentId, status: jobs.status, n: sql<unknown>`count(*)` })
    .from(jobs)
    .where(inArray(jobs.parentId, arrays.map((a) => a.id)))
    .groupBy(jobs.parentId, jobs.status);
  for (const r of found) {
    const c = out.get(r.parentId!);
    if (c && (jobStatuses as readonly string[]).includes(r.status)) c[r.status] = toNumber(r.n);
  }
  return out;
}

/** An array's end from its tasks': cancelled when its owner cancelled it, failed when any failed, cancelled when any was, else succeeded. */
export function arrayOutcome(counts: TaskCounts, cancelRequested: boolean): JobStatus {
  if (cancelRequested) return 'cancelled';
  if (counts.failed) return 'failed';
  if (counts.cancelled) return 'cancelled';
  return 'succeeded';
}

/**
 * Ends the array once none of its tasks is open. Locks the array's row first: a task ending
 * beside this one waits here, and then sees this one's end (each statement reads afresh).
 */
export async function settleArray(tx: DbOrTx, arrayId: string, at: Date): Promise<void> {
  const [array] = await tx
    .select({ id: jobs.id, status: jobs.status, cancelRequestedAt: jobs.cancelRequestedAt, taskCount: jobs.taskCount, maxParallel: jobs.maxParallel })
    .from(jobs)
    .where(eq(jobs.id, arrayId))
    .for('update');
  if (!array || isTerminal(array.status)) return;
  const [open] = await tx
    .select({ id: jobs.id })
    .from(jobs)
    .where(and(eq(jobs.parentId, arrayId), inArray(jobs.status, [...openStatuses])))
    .limit(1);
  if (open) return;
  const counts = (await taskCounts(tx, [array])).get(arrayId)!;
  const to = arrayOutcome(counts, array.cancelRequestedAt !== null);
  const why = `every task ended: ${counts.succeeded} succeeded, ${counts.failed} failed, ${counts.cancelled} cancelled`;
  await changeStatus(tx, arrayId, ['queued', 'running'], to, why, { finishedAt: at }, at);
}

/**
 * A task left its node (in takeOffNode's transaction): its array's lease count goes down, and an
 * ended task may end the array, or (failFast) cancel the rest.
 */
export async function taskLeftNode(tx: DbOrTx, task: JobRow, at: Date): Promise<void> {
  const arrayId = task.parentId!;
  await tx
    .update(jobs)
    .set({ tasksActive: sql`${jobs.tasksActive} - 1` })
    .where(eq(jobs.id, arrayId));
  if (isTerminal(task.status)) await taskEnded(tx, task, at);
}

/** A task ended (from its node, or cancelled in the queue). */
export async function taskEnded(tx: DbOrTx, task: JobRow, at: Date): Promise<void> {
  const arrayId = task.parentId!;
  if (task.status === 'failed') {
    const [array] = await tx
      .select({ failFast: sql<boolean | null>`(${jobs.spec} -> 'tasks' ->> 'failFast')::boolean`, cancelRequestedAt: jobs.cancelRequestedAt })
      .from(jobs)
      .where(eq(jobs.id, arrayId))
      .for('update');
    if (array?.failFast && !array.cancelRequestedAt) {
      await cancelTasks(tx, arrayId, `task ${task.taskIndex} failed and the array fails fast`, at);
    }
  }
  await settleArray(tx, arrayId, at);
}

/**
 * Cancels every task of the array that has not ended: queued ones at once (one statement and
 * one for their events), leased and running ones by a request their nodes hear in the next
 * heartbeat answer. Tasks are locked before the array's row (the lock order).
 */
export async function cancelTasks(tx: DbOrTx, arrayId: string, why: string, at: Date): Promise<{ cancelled: number; requested: number }> {
  const ts = sql`${at.toISOString()}::timestamptz`;
  // The queued ones and their events in one statement: an array of 10,000 sends no list of ids around.
  const [cancelled] = await executeRows<{ n: unknown }>(
    tx,
    sql`with c as (
          update ${jobs} set status = 'cancelled', finished_at = ${ts}, updated_at = ${ts}, pending_reason = null
          where parent_id = ${arrayId} and status = 'queued' returning id
        ), e as (
          insert into ${jobEvents} (job_id, from_status, to_status, reason, created_at) select id, 'queued', 'cancelled', ${why}, ${ts} from c
        )
        select count(*) as n from c`,
  );
  const requested = await tx
    .update(jobs)
    .set({ cancelRequestedAt: at, updatedAt: at })
    .where(and(eq(jobs.parentId, arrayId), inArray(jobs.status, ['leased', 'running']), sql`${jobs.cancelRequestedAt} is null`))
    .returning({ id: jobs.id, status: jobs.status });
  if (requested.length) {
    await tx.execute(sql`insert into ${jobEvents} (job_id, from_status, to_status, reason, created_at)
      select id, status, status, ${`cancel requested: ${why}`}, ${ts} from jsonb_to_recordset(${JSON.stringify(requested)}::jsonb) as v(id text, status text)`);
  }
  return { cancelled: toNumber(cancelled?.n ?? 0), requested: requested.length };
}

/** The owner cancels the array: every open task is cancelled, and the array ends cancelled once they have. */
export async function cancelArray(tx: DbOrTx, array: JobRow, at: Date): Promise<void> {
  await cancelTasks(tx, array.id, 'its array was cancelled by its owner', at);
  if (!array.cancelRequestedAt) {
    await tx.update(jobs).set({ cancelRequestedAt: at, updatedAt: at }).where(eq(jobs.id, array.id));
    await recordEvent(tx, array.id, array.status, 'cancel requested by client', at);
  }
  await settleArray(tx, array.id, at);
}

// ---------------------------------------------------------------------------------------------
// Reading

type Metered = { usage: MeteredUsage; costMicros: number };

/**
 * What each array used and costs: the sums over its tasks, those holding a lease metered to
 * `now`. The array's own row records none (usage by day and by job counts each task once).
 */
export async function arrayUsage(db: DbOrTx, arrays: readonly Pick<JobRow, 'id'>[], now: Date): Promise<Map<string, Metered>> {
  const out = new Map<string, Metered>();
  if (!arrays.length) return out;
  const ids = arrays.map((a) => a.id);
  for (const id of ids) out.set(id, { costMicros: 0, usage: { seconds: 0, gpuSeconds: {}, cpuCoreSeconds: 0, memoryMbSeconds: 0 } });
  const idList = sql.join(ids.map((id) => sql`${id}`), sql`, `);
  const ended = await executeRows<{ parent_id: string; cost: unknown; s: unknown; cpu: unknown; mem: unknown }>(
    db,
    sql`select parent_id, coalesce(sum(cost_micros), 0) as cost, coalesce(sum((usage ->> 'seconds')::float8), 0) as s,
          coalesce(sum((usage ->> 'cpuCoreSeconds')::float8), 0) as cpu, coalesce(sum((usage ->> 'memoryMbSeconds')::float8), 0) as mem
        from ${jobs} where parent_id in (${idList}) and status not in ('leased', 'running') and usage is not null group by parent_id`,
  );
  for (const r of ended) {
    const m = out.get(r.parent_id)!;
    m.costMicros += toNumber(r.cost);
    m.usage.seconds += Number(r.s);
    m.usage.cpuCoreSeconds += Number(r.cpu);
    m.usage.memoryMbSeconds += Number(r.mem);
  }
  const gpuSeconds = await executeRows<{ parent_id: string; model: string; s: unknown }>(
    db,
    sql`select j.parent_id, g.key as model, sum(g.value::float8) as s
        from ${jobs} j, jsonb_each_text(j.usage -> 'gpuSeconds') g
        where j.parent_id in (${idList}) and j.status not in ('leased', 'running') and j.usage is not null group by 1, 2`,
  );
  for (const r of gpuSeconds) out.get(r.parent_id)!.usage.gpuSeconds[r.model] = Number(r.s);
  const live = await db
    .select()
    .from(jobs)
    .where(and(inArray(jobs.parentId, ids), inArray(jobs.status, ['leased', 'running'])));
  const arrayOf = new Map(live.map((r) => [r.id, r.parentId!]));
  for (const [id, m] of await meterLive(db, live, now)) {
    const sum = out.get(arrayOf.get(id)!)!;
    sum.costMicros += m.costMicros;
    sum.usage.seconds += m.usage.seconds;
    sum.usage.cpuCoreSeconds += m.usage.cpuCoreSeconds;
    sum.usage.memoryMbSeconds += m.usage.memoryMbSeconds;
    for (const [model, s] of Object.entries(m.usage.gpuSeconds)) sum.usage.gpuSeconds[model] = (sum.usage.gpuSeconds[model] ?? 0) + s;
  }
  const round3 = (n: number) => Math.round(n * 1000) / 1000;
  for (const m of out.values()) {
    m.usage.seconds = round3(m.usage.seconds);
    m.usage.cpuCoreSeconds = round3(m.usage.cpuCoreSeconds);
    m.usage.memoryMbSeconds = round3(m.usage.memoryMbSeconds);
    for (const k in m.usage.gpuSeconds) m.usage.gpuSeconds[k] = round3(m.usage.gpuSeconds[k]!);
  }
  return out;
}

/** An array's tasks in index order after `cursor` (the last index seen), of one status or all. */
export async function listTasks(
  db: DbOrTx,
  array: JobRow,
  opts: { status?: JobStatus | undefined; limit: number; cursor?: number | undefined },
): Promise<{ items: JobRow[]; nextCursor: string | null }> {
  if (!isArray(array)) throw new ApiError('not_found', 'this job is not an array: it has no tasks');
  const where = [eq(jobs.parentId, array.id)];
  if (opts.status) where.push(eq(jobs.status, opts.status));
  if (opts.cursor !== undefined) where.push(gt(jobs.taskIndex, opts.cursor));
  const rows = await db
    .select()
    .from(jobs)
    .where(and(...where))
    .orderBy(jobs.taskIndex)
    .limit(opts.limit + 1);
  const items = rows.slice(0, opts.limit);
  return { items, nextCursor: rows.length > opts.limit ? String(items[items.length - 1]!.taskIndex) : null };
}

async function recordSubmit(tx: DbOrTx, jobId: string, reason: string, at: Date) {
  await tx.insert(jobEvents).values({ jobId, fromStatus: null, toStatus: 'queued', reason, at });
}

/** A job's events; a task's begin with its array's submit (tasks get no submit event each). */
export async function eventsOf(db: DbOrTx, job: Pick<JobRow, 'id' | 'parentId'>) {
  const own = eq(jobEvents.jobId, job.id);
  const where = job.parentId ? or(own, and(eq(jobEvents.jobId, job.parentId), isNull(jobEvents.fromStatus))) : own;
  return db.select().from(jobEvents).where(where).orderBy(jobEvents.id);
}
