import { sql } from 'drizzle-orm';
import { bigint, bigserial, check, index, integer, jsonb, pgTable, text, uniqueIndex } from 'drizzle-orm/pg-core';
import type { JobSpec } from '../../../shared/jobs.ts';

/**
 * What a task's row keeps of its array's spec: only the fields that queue_shape and the scheduler's
 * queue read (the whole spec is stored once, on the array's row; taskSpec() gives the task's own).
 */
export interface TaskSpecStub {
  task: true;
  image: string;
  network: JobSpec['network'];
  constraints?: JobSpec['constraints'];
  resources: { gpu?: NonNullable<JobSpec['resources']['gpu']> };
  /** How long a task may run: the scheduler sizes a lease's credit hold by it. */
  timeoutSeconds: number;
}
export type StoredSpec = JobSpec | TaskSpecStub;
import { accounts } from './accounts.ts';
import { at, createdAt } from './columns.ts';

export const jobs = pgTable(
  'jobs',
  {
    id: text('id').primaryKey(),
    accountId: text('account_id')
      .notNull()
      .references(() => accounts.id),
    name: text('name').notNull(),
    // A task of an array keeps a stub here; its array (parent_id) keeps the spec.
    spec: jsonb('spec').$type<StoredSpec>().notNull(),
    specDigest: text('spec_digest').notNull(),
    status: text('status', { enum: ['queued', 'leased', 'running', 'succeeded', 'failed', 'cancelled'] }).notNull(),
    priority: integer('priority').notNull().default(0),
    // The requested resources as columns, so the scheduler can filter without reading spec.
    cpuMillis: integer('cpu_millis').notNull(),
    memoryMb: integer('memory_mb').notNull(),
    // What the job may write on its node (0 for jobs submitted before disk was scheduled).
    diskMb: integer('disk_mb').notNull().default(0),
    gpuCount: integer('gpu_count').notNull().default(0),
    gpuModel: text('gpu_model'),
    gpuMinMemoryMb: integer('gpu_min_memory_mb'),
    maxPriceMicros: bigint('max_price_micros', { mode: 'number' }),
    region: text('region'),
    attempts: integer('attempts').notNull().default(0),
    maxAttempts: integer('max_attempts').notNull(),
    nodeId: text('node_id'),
    gpuIds: jsonb('gpu_ids').$type<string[]>(),
    leaseId: text('lease_id'),
    leaseEpoch: integer('lease_epoch').notNull().default(0),
    leaseExpiresAt: at('lease_expires_at'),
    // The exp of the newest lease token handed out: heartbeats re-sign only when it nears.
    leaseTokenExpiresAt: at('lease_token_expires_at'),
    // Prices in force when the lease was issued: usage is charged at these.
    priceGpuHourMicros: bigint('price_gpu_hour_micros', { mode: 'number' }),
    priceCpuHourMicros: bigint('price_cpu_hour_micros', { mode: 'number' }),
    pendingReason: text('pending_reason'),
    // Everything that decides where a job can fit, hashed: the scheduler skips and explains a
    // shape that fits nowhere once per pass, not once per job (queue_reasons). The image's first
    // part stands for its registry (finer than the registry rule needs, never coarser).
    queueShape: text('queue_shape').generatedAlwaysAs(
      sql`md5(gpu_count::text || '|' || coalesce(gpu_model, '') || '|' || coalesce(gpu_min_memory_mb::text, '') || '|' || cpu_millis::text || '|' || memory_mb::text || '|' || disk_mb::text || '|' || coalesce(max_price_micros::text, '') || '|' || coalesce(region, '') || '|' || coalesce((spec -> 'constraints')::text, '') || '|' || coalesce(spec -> 'resources' -> 'gpu' ->> 'minCudaVersion', '') || '|' || split_part(spec ->> 'image', '/', 1) || '|' || coalesce(spec ->> 'network', ''))`,
    ),
    cancelRequestedAt: at('cancel_requested_at'),
    idempotencyKey: text('idempotency_key'),
    createdAt: createdAt(),
    updatedAt: at('updated_at').notNull().defaultNow(),
    leasedAt: at('leased_at'),
    startedAt: at('started_at'),
    finishedAt: at('finished_at'),
    exitCode: integer('exit_code'),
    error: text('error'),
    result: jsonb('result'),
    usage: jsonb('usage'),
    costMicros: bigint('cost_micros', { mode: 'number' }),
    // Job arrays: the array is a job row with task_count (never queued for placement itself); each
    // task is a job with parent_id, its index, and the count (for its lease token).
    parentId: text('parent_id'),
    taskIndex: integer('task_index'),
    taskCount: integer('task_count'),
    maxParallel: integer('max_parallel'),
    // The array's tasks holding a lease now: raised by placement, lowered as each leaves its node.
    tasksActive: integer('tasks_active').notNull().default(0),
    // The live lease's money (coordinator/ledger/leases.ts); all null for work that costs nothing.
    // The pending transfer holding the client's credit for the lease now, and what it holds.
    holdId: text('hold_id'),
    holdMicros: bigint('hold_micros', { mode: 'number' }),
    // The lease is never extended past this (what is held covers up to it); null: no cap.
    heldUntil: at('held_until'),
    // When the next billing period's posting is due (null: nothing more to bill until the end).
    billAt: at('bill_at'),
    // What this lease has posted so far (its own lines: each lease bills its own node).
    leaseBilledMicros: bigint('lease_billed_micros', { mode: 'number' }),
    // The last heartbeat that renewed the lease: a lost node is billed up to here.
    leaseSeenAt: at('lease_seen_at'),
    // The next hold could not be made: the lease runs out at held_until and the job ends failed (credit).
    creditShortAt: at('credit_short_at'),
    // The platform's fee in force at lease, in basis points of what is posted.
    feeBasisPoints: integer('fee_basis_points'),
  },
  (t) => [
    check(
      'jobs_status',
      sql`${t.status} in ('queued', 'leased', 'running', 'succeeded', 'failed', 'cancelled')`,
    ),
    check('jobs_attempts', sql`${t.attempts} >= 0 and ${t.attempts} <= ${t.maxAttempts}`),
    uniqueIndex('jobs_idempotency').on(t.accountId, t.idempotencyKey),
    // The last line against running more of an array at once than it allows (like nodes' allocation).
    check('jobs_tasks_active', sql`${t.tasksActive} >= 0 and (${t.maxParallel} is null or ${t.tasksActive} <= ${t.maxParallel})`),
    // An array's tasks: its counts, whether any is open, its pages by status (one index, for a cheap submit).
    index('jobs_parent_status').on(t.parentId, t.status, t.taskIndex).where(sql`${t.parentId} is not null`),
    // The client's list: jobs and arrays, not the arrays' tasks (fewer index entries per task made).
    index('jobs_account_id').on(t.accountId, t.id).where(sql`${t.parentId} is null`),
    index('jobs_account_status_id').on(t.accountId, t.status, t.id).where(sql`${t.parentId} is null`),
    // The scheduler's queue: queued jobs by priority, then age (ids are time-ordered), as
    // (-priority, id) so that one row comparison walks it from a cursor.
    index('jobs_queue')
      .on(sql`(-${t.priority})`, t.id)
      .where(sql`${t.status} = 'queued'`),
    index('jobs_queue_shape')
      .on(t.queueShape)
      .where(sql`${t.status} = 'queued'`),
    index('jobs_node_live')
      .on(t.nodeId)
      .where(sql`${t.status} in ('leased', 'running')`),
    index('jobs_lease_expiry')
      .on(t.leaseExpiresAt)
      .where(sql`${t.status} in ('leased', 'running')`),
    // Pool figures (started / finished in the last hour) and usage by day (client: own jobs; provider: by node).
    index('jobs_started_at').on(t.startedAt).where(sql`${t.startedAt} is not null`),
    index('jobs_finished_at').on(t.finishedAt).where(sql`${t.finishedAt} is not null`),
    index('jobs_account_finished').on(t.accountId, t.finishedAt).where(sql`${t.finishedAt} is not null`),
    index('jobs_node_finished').on(t.nodeId, t.finishedAt).where(sql`${t.finishedAt} is not null`),
  ],
);

export const jobEvents = pgTable(
  'job_events',
  {
    id: bigserial('id', { mode: 'number' }).primaryKey(),
    jobId: text('job_id')
      .notNull()
      .references(() => jobs.id),
    at: createdAt(),
    fromStatus: text('from_status'),
    toStatus: text('to_status').notNull(),
    reason: text('reason').notNull(),
  },
  (t) => [index('job_events_job').on(t.jobId, t.id)],
);
