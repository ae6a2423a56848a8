import { sql } from 'drizzle-orm';
import { bigint, boolean, check, index, integer, jsonb, pgTable, primaryKey, text } from 'drizzle-orm/pg-core';
import { accounts } from './accounts.ts';
import { at, createdAt } from './columns.ts';

export const nodes = pgTable(
  'nodes',
  {
    id: text('id').primaryKey(),
    accountId: text('account_id')
      .notNull()
      .references(() => accounts.id),
    name: text('name').notNull(),
    status: text('status', { enum: ['online', 'offline', 'retired'] }).notNull(),
    draining: boolean('draining').notNull().default(false),
    // False while the node's agent has no runtime to run jobs with (no Docker, no process
    // runtime): it stays online with its metrics, and nothing is placed on it.
    takesWork: boolean('takes_work').notNull().default(true),
    labels: jsonb('labels').$type<Record<string, string>>().notNull().default({}),
    region: text('region'),
    // The agent's Ed25519 public key (JWK): the coordinator keeps no agent secret.
    publicKey: jsonb('public_key').$type<Record<string, string>>().notNull(),
    agentVersion: text('agent_version'),
    runtime: jsonb('runtime').$type<Record<string, unknown>>(),
    host: jsonb('host').$type<Record<string, unknown>>(),
    cpuMillis: integer('cpu_millis').notNull(),
    memoryMb: integer('memory_mb').notNull(),
    diskMb: integer('disk_mb').notNull().default(0),
    allocatedCpuMillis: integer('allocated_cpu_millis').notNull().default(0),
    allocatedMemoryMb: integer('allocated_memory_mb').notNull().default(0),
    // The disk budgets of the jobs on it: disk_mb (free disk, as last reported) less this is what a new job may take.
    allocatedDiskMb: integer('allocated_disk_mb').notNull().default(0),
    priceGpuHourMicros: bigint('price_gpu_hour_micros', { mode: 'number' }).notNull().default(0),
    priceCpuHourMicros: bigint('price_cpu_hour_micros', { mode: 'number' }).notNull().default(0),
    lastHeartbeatAt: at('last_heartbeat_at'),
    metrics: jsonb('metrics'),
    // For "least recently used" among equally good nodes.
    lastPlacedAt: at('last_placed_at'),
    jobsSucceeded: integer('jobs_succeeded').notNull().default(0),
    jobsFailed: integer('jobs_failed').notNull().default(0),
    leaseExpiries: integer('lease_expiries').notNull().default(0),
    createdAt: createdAt(),
  },
  (t) => [
    check('nodes_status', sql`${t.status} in ('online', 'offline', 'retired')`),
    // The last line against over-allocation.
    check(
      'nodes_allocation',
      sql`${t.allocatedCpuMillis} >= 0 and ${t.allocatedMemoryMb} >= 0 and ${t.allocatedCpuMillis} <= ${t.cpuMillis} and ${t.allocatedMemoryMb} <= ${t.memoryMb}`,
    ),
    check('nodes_prices', sql`${t.priceGpuHourMicros} >= 0 and ${t.priceCpuHourMicros} >= 0`),
    index('nodes_account').on(t.accountId, t.id),
    index('nodes_status_heartbeat').on(t.status, t.lastHeartbeatAt),
  ],
);

export const gpus = pgTable(
  'gpus',
  {
    nodeId: text('node_id')
      .notNull()
      .references(() => nodes.id),
    // As the agent advertises it: the GPU UUID, or a MIG device's id.
    id: text('id').notNull(),
    index: integer('index').notNull(),
    uuid: text('uuid').notNull(),
    model: text('model').notNull(),
    memoryMb: integer('memory_mb').notNull(),
    driverVersion: text('driver_version'),
    cudaVersion: text('cuda_version'),
    pciBusId: text('pci_bus_id'),
    // { gpuInstanceId, computeInstanceId } for a MIG device, null for a whole GPU.
    mig: jsonb('mig').$type<{ gpuInstanceId: number; computeInstanceId: number } | null>(),
    jobId: text('job_id'),
    // Latest live figures from heartbeats.
    utilizationPct: integer('utilization_pct'),
    memoryUsedMb: integer('memory_used_mb'),
    temperatureC: integer('temperature_c'),
    powerW: integer('power_w'),
  },
  (t) => [
    primaryKey({ columns: [t.nodeId, t.id] }),
    check('gpus_memory', sql`${t.memoryMb} >= 0`),
    index('gpus_uuid').on(t.uuid),
    index('gpus_free').on(t.model).where(sql`${t.jobId} is null`),
    index('gpus_job').on(t.jobId),
  ],
);

export const enrollmentTokens = pgTable(
  'enrollment_tokens',
  {
    id: text('id').primaryKey(),
    accountId: text('account_id')
      .notNull()
      .references(() => accounts.id),
    prefix: text('prefix').notNull().unique(),
    hash: text('hash').notNull(),
    labels: jsonb('labels').$type<Record<string, string>>().notNull().default({}),
    usesLeft: integer('uses_left').notNull(),
    expiresAt: at('expires_at').notNull(),
    createdAt: createdAt(),
    revokedAt: at('revoked_at'),
  },
  (t) => [index('enrollment_tokens_account').on(t.accountId), check('enrollment_tokens_uses', sql`${t.usesLeft} >= 0`)],
);

export const nodeMetrics = pgTable(
  'node_metrics',
  {
    nodeId: text('node_id')
      .notNull()
      .references(() => nodes.id),
    // One sample per node per minute: the minute it stands for.
    at: at('at').notNull(),
    sample: jsonb('sample').notNull(),
  },
  (t) => [primaryKey({ columns: [t.nodeId, t.at] }), index('node_metrics_at').on(t.at)],
);
