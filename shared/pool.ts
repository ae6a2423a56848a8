// Wire shapes of what anyone can see of the pool (GET /v1/pool, /v1/pool/history), what a
// client can lease now (GET /v1/offers, POST /v1/jobs/dry-run) and what was spent or earned
// (GET /v1/usage). Prices and amounts travel as decimal currency units (shared/money.ts).
import { z } from 'zod';
import { JobStatus, Labels, MeteredUsage, Region } from './jobs.ts';

export { MeteredUsage } from './jobs.ts';

const count = z.number().int().min(0);
const iso = z.string();

/** A whole GPU, or a MIG device (a slice of one, leased on its own): the pool shows them apart. */
export const GpuKind = z.enum(['gpu', 'mig']);
export type GpuKind = z.infer<typeof GpuKind>;

export const PriceRange = z.object({ min: z.number(), median: z.number(), max: z.number() });
export type PriceRange = z.infer<typeof PriceRange>;

export const GpuCounts = z.object({
  /** On online nodes: free + busy + draining. */
  online: count,
  /** Idle on an online node that takes work. */
  free: count,
  /** Held by a job. */
  busy: count,
  /** Idle on an online node that takes no work (draining, or its agent has no runtime): not offered. */
  draining: count,
  /** On offline nodes. */
  offline: count,
});
export type GpuCounts = z.infer<typeof GpuCounts>;

/** One row of the pool table: a GPU model (nvidia-smi's full product name), whole GPUs or MIG devices. */
export const PoolGpuModel = GpuCounts.extend({
  model: z.string(),
  kind: GpuKind,
  /** Memory of one device (the smallest among them: what a job can count on). */
  memoryMb: count,
  /** Memory of the online devices together. */
  memoryTotalMb: count,
  /** Mean live utilization of the online devices, from heartbeats; null before any report. */
  avgUtilizationPct: z.number().nullable(),
  /** Among free devices: the price per GPU-hour of their nodes; null when none is free. */
  pricePerGpuHour: PriceRange.nullable(),
});
export type PoolGpuModel = z.infer<typeof PoolGpuModel>;

export const PoolQueueModel = z.object({
  /** The requested model as the job wrote it; null when the job takes any GPU or none. */
  model: z.string().nullable(),
  jobs: count,
  gpus: count,
  oldestQueuedAt: iso,
});
export type PoolQueueModel = z.infer<typeof PoolQueueModel>;

export const PoolRegion = z.object({
  region: z.string().nullable(),
  nodesOnline: count,
  nodesOffline: count,
  gpusOnline: count,
  gpusFree: count,
  gpusBusy: count,
  cpuCores: z.number(),
  cpuCoresFree: z.number(),
  memoryMb: count,
  memoryFreeMb: count,
});
export type PoolRegion = z.infer<typeof PoolRegion>;

/** GET /v1/pool: aggregates only, never a tenant's data. */
export const Pool = z.object({
  at: iso,
  nodes: z.object({ online: count, offline: count, draining: count }),
  /** Whole GPUs and MIG devices, each kind summed apart. */
  gpus: GpuCounts,
  migDevices: GpuCounts,
  models: z.array(PoolGpuModel),
  /** Of online nodes. */
  cpu: z.object({ cores: z.number(), free: z.number() }),
  memory: z.object({ totalMb: count, freeMb: count }),
  queue: z.object({
    depth: count,
    gpusRequested: count,
    oldestQueuedAt: iso.nullable(),
    oldestWaitSeconds: z.number().nullable(),
    byModel: z.array(PoolQueueModel),
  }),
  lastHour: z.object({ started: count, succeeded: count, failed: count }),
  regions: z.array(PoolRegion),
});
export type Pool = z.infer<typeof Pool>;

// A time as ISO 8601, or a look-back like 90s, 15m, 6h, 7d.
const durationPattern = /^(\d{1,6})(s|m|h|d)$/;
const durationUnits = { s: 1, m: 60, h: 3600, d: 86_400 } as const;
export function parseDurationSeconds(v: string): number | null {
  const m = v.match(durationPattern);
  if (!m) return null;
  return Number(m[1]) * durationUnits[m[2] as keyof typeof durationUnits];
}

export const PoolHistoryQuery = z.object({
  since: z
    .string()
    .max(40)
    .refine((v) => parseDurationSeconds(v) !== null || !Number.isNaN(Date.parse(v)), 'an ISO time, or a look-back like 1h or 7d')
    .optional(),
  step: z
    .string()
    .max(12)
    .refine((v) => /^\d{1,6}$/.test(v) || parseDurationSeconds(v) !== null, 'seconds, or a duration like 5m')
    .optional(),
});

export const PoolHistoryModel = z.object({
  model: z.string(),
  kind: GpuKind,
  online: count,
  free: count,
  busy: count,
});

export const PoolHistoryPoint = z.object({
  at: iso,
  /** Whole GPUs and MIG devices together. */
  gpus: GpuCounts,
  /** busy / online, in percent; null when nothing is online. */
  allocationPct: z.number().nullable(),
  /** Mean live GPU utilization of the online devices. */
  avgUtilizationPct: z.number().nullable(),
  queueDepth: count,
  oldestWaitSeconds: z.number().nullable(),
  models: z.array(PoolHistoryModel),
});
export type PoolHistoryPoint = z.infer<typeof PoolHistoryPoint>;

export const PoolHistory = z.object({
  since: iso,
  until: iso,
  /** Seconds between points. */
  step: z.number().int().positive(),
  points: z.array(PoolHistoryPoint),
});
export type PoolHistory = z.infer<typeof PoolHistory>;

const queryInt = (min: number, max: number) => z.coerce.number().int().min(min).max(max);

/** GET /v1/offers: the shape a client asks for; every field narrows the answer. */
export const OffersQuery = z.object({
  gpuModel: z.string().min(1).max(128).optional(),
  gpus: queryInt(0, 64).optional(),
  minGpuMemoryMb: queryInt(1, 4_194_304).optional(),
  maxPricePerHour: z.coerce.number().min(0).max(1_000_000).optional(),
  region: Region.optional(),
  cpu: z.coerce.number().positive().max(1024).optional(),
  memoryMb: queryInt(1, 16_777_216).optional(),
  limit: queryInt(1, 500).default(100),
});
export type OffersQuery = z.infer<typeof OffersQuery>;

export const Shape = z.object({ gpus: count, cpu: z.number(), memoryMb: count });
export type Shape = z.infer<typeof Shape>;

/** Free capacity on one node; the provider is not named. */
export const Offer = z.object({
  nodeId: z.string(),
  region: z.string().nullable(),
  labels: Labels,
  /** The node's free GPUs of one model and kind; null for an offer of CPU and memory only. */
  gpu: z
    .object({
      model: z.string(),
      kind: GpuKind,
      memoryMb: count,
      free: count,
      total: count,
      cudaVersion: z.string().nullable(),
      driverVersion: z.string().nullable(),
    })
    .nullable(),
  cpuFree: z.number(),
  memoryFreeMb: count,
  pricePerGpuHour: z.number(),
  pricePerCpuHour: z.number(),
  /** What the asked shape costs per hour here. */
  pricePerHour: z.number(),
  record: z.object({ jobsSucceeded: count, jobsFailed: count, leaseExpiries: count }),
  lastHeartbeatAt: iso.nullable(),
  /** The registries the node pulls images from; null when its agent does not say. */
  registries: z.array(z.string()).nullable(),
  /** The job networks it takes: `bridge` only where its agent isolates jobs' networking; null when not said. */
  networks: z.array(z.string()).nullable(),
});
export type Offer = z.infer<typeof Offer>;

export const Offers = z.object({ shape: Shape, items: z.array(Offer) });
export type Offers = z.infer<typeof Offers>;

/** Why a group of nodes cannot take a job, in the order they are checked. */
export const constraintNames = [
  'offline',
  'draining',
  'no_runtime',
  'node',
  'provider',
  'region',
  'labels',
  'registry',
  'network',
  'gpu_model',
  'gpu_memory',
  'cuda',
  'gpu_count',
  'gpus_busy',
  'cpu',
  'memory',
  'disk',
  'price',
] as const;
export const ConstraintName = z.enum(constraintNames);
export type ConstraintName = z.infer<typeof ConstraintName>;

export const RuledOut = z.object({ constraint: ConstraintName, nodes: count, detail: z.string() });
export type RuledOut = z.infer<typeof RuledOut>;

/** POST /v1/jobs/dry-run: what submitting this spec now would do, without queuing it. */
export const DryRun = z.object({
  fits: z.boolean(),
  shape: Shape,
  maxPricePerHour: z.number().nullable(),
  /** The offers the job would take first, best first. */
  offers: z.array(Offer),
  /** The cost per hour on the first offer; null when none fits. */
  estimatedCostPerHour: z.number().nullable(),
  /** Nodes that fit: how many. */
  feasibleNodes: count,
  /** Every other node, grouped by the first constraint that rules it out. */
  ruledOut: z.array(RuledOut),
  /**
   * Whether the caller's credit covers the hold a lease on the first offer takes (its price for one
   * lease TTL, or the timeout if shorter); null when none fits or it costs nothing.
   */
  credit: z
    .object({ needed: z.number(), available: z.number(), fits: z.boolean(), detail: z.string() })
    .nullable()
    .optional(),
});
export type DryRun = z.infer<typeof DryRun>;


const day = z.string().regex(/^\d{4}-\d{2}-\d{2}$/, 'a day like 2025-01-31');

export const UsageQuery = z.object({
  /** First day counted (UTC), default 30 days back. */
  since: day.optional(),
  /** Last day counted (UTC), default today. */
  until: day.optional(),
  /** Only spend (client) or only earnings (provider); default whatever the key may see. */
  role: z.enum(['client', 'provider']).optional(),
  /** How many jobs to list, newest first. */
  limit: queryInt(1, 500).default(100),
});
export type UsageQuery = z.infer<typeof UsageQuery>;

export const UsageDay = z.object({
  day,
  jobs: count,
  amount: z.number(),
  gpuSeconds: z.number(),
  cpuCoreSeconds: z.number(),
});
export type UsageDay = z.infer<typeof UsageDay>;

export const UsageJob = z.object({
  jobId: z.string(),
  /** The job's name for its owner; null in a provider's earnings (another tenant's job). */
  name: z.string().nullable(),
  status: JobStatus,
  nodeId: z.string().nullable(),
  finishedAt: iso,
  amount: z.number(),
  usage: MeteredUsage.nullable(),
});
export type UsageJob = z.infer<typeof UsageJob>;

export const UsageSide = z.object({
  total: z.number(),
  jobs: count,
  byDay: z.array(UsageDay),
  byJob: z.array(UsageJob),
});
export type UsageSide = z.infer<typeof UsageSide>;

/** GET /v1/usage: a client's spend and a provider's earnings over [since, until]. */
export const Usage = z.object({
  since: day,
  until: day,
  spend: UsageSide.nullable(),
  earnings: UsageSide.nullable(),
});
export type Usage = z.infer<typeof Usage>;
