import { sql, type SQL } from 'drizzle-orm';
import { formatAmount } from '../../shared/money.ts';

// The matching rules, each written once in its two forms side by side: JavaScript over the
// scheduler's in-memory views (feasibility.ts, a pass over thousands of nodes asks nothing of the
// database), and SQL over `nodes n` / `gpus g` for what must be one query (offers, dry runs, pool
// stats, the lease guard). test/integration/rules-parity.test.ts proves the forms agree over random pools.

/** What a job asks for, as every rule reads it (the scheduler from a job's columns, offers from a spec or filters). */
export interface JobRequest {
  id: string;
  cpuMillis: number;
  memoryMb: number;
  /** The job's disk budget; 0 asks none (offers by filter). */
  diskMb: number;
  gpuCount: number;
  gpuModel: string | null;
  gpuMinMemoryMb: number | null;
  /** major * 1000 + minor (parseCuda). */
  minCuda: number | null;
  labels: Record<string, string> | null;
  region: string | null;
  nodeId: string | null;
  providerId: string | null;
  maxPriceMicros: number | null;
  /** The registry of its image (shared/images.ts imageRegistry); absent asks none (offers by filter). */
  registry?: string | undefined;
  /** Its network (`bridge` or `none`); absent asks none. */
  network?: string | undefined;
}

/** A free GPU of a node, as the scheduler sees it in one pass. */
export interface GpuView {
  id: string;
  index: number;
  model: string;
  memoryMb: number;
  /** The CUDA version the driver supports, as major * 1000 + minor; null when unknown. */
  cuda: number | null;
  /** A MIG device, not a whole GPU (absent: a whole GPU). A job gets one kind, of one model. */
  mig?: boolean;
}

/** A node that takes work, with what is free on it in this pass. */
export interface NodeView {
  id: string;
  accountId: string;
  labels: Record<string, string>;
  region: string | null;
  priceGpuHourMicros: number;
  priceCpuHourMicros: number;
  freeCpuMillis: number;
  freeMemoryMb: number;
  /** The free disk it last reported, less the disk budgets of the jobs on it. */
  freeDiskMb: number;
  /** Free GPUs by index. */
  freeGpus: GpuView[];
  /** For least recently used; 0 when never placed on. */
  lastPlacedAtMs: number;
  /** The registries its agent pulls images from (nodes.runtime); null or absent when its agent does not say. */
  registries?: string[] | null;
  /** The job networks it takes (`bridge` only where its agent isolates it); null or absent when not said. */
  networks?: string[] | null;
}

const col = (alias: string, name: string) => sql.raw(`${alias}.${name}`);

// ---------------------------------------------------------------------------------------------
// Whether a node takes work at all

/**
 * A node takes work when it is online, not draining, and its agent has a runtime to run jobs
 * with. JS: the scheduler reads only such nodes (loadPassState), so its views all pass.
 */
export const takesWork = {
  row: (n: { status: string; draining: boolean; takesWork: boolean }) => n.status === 'online' && !n.draining && n.takesWork,
  sql: (alias = 'n'): SQL => sql`(${col(alias, 'status')} = 'online' and not ${col(alias, 'draining')} and ${col(alias, 'takes_work')})`,
  /** CASE arms naming the first part a node over `nodes n` fails (what a dry run reports). */
  whyNotSql: (): SQL => sql`when n.status <> 'online' then 'offline' when n.draining then 'draining' when not n.takes_work then 'no_runtime'`,
};

// ---------------------------------------------------------------------------------------------
// Rules on the node itself (not on what is free), in the order a dry run reports them

export type NodeRuleName = 'node' | 'provider' | 'region' | 'labels' | 'registry' | 'network';

export interface NodeRule {
  name: NodeRuleName;
  /** Whether the job asks anything of this rule; a rule it does not ask passes. */
  asks(job: JobRequest): boolean;
  js(job: JobRequest, node: NodeView): boolean;
  /** Over `nodes n`. */
  sql(job: JobRequest): SQL;
}

function labelsMatch(want: Record<string, string>, have: Record<string, string>): boolean {
  for (const k in want) if (have[k] !== want[k]) return false;
  return true;
}

export const nodeRules: readonly NodeRule[] = [
  { name: 'node', asks: (j) => j.nodeId !== null, js: (j, n) => n.id === j.nodeId, sql: (j) => sql`n.id = ${j.nodeId}` },
  { name: 'provider', asks: (j) => j.providerId !== null, js: (j, n) => n.accountId === j.providerId, sql: (j) => sql`n.account_id = ${j.providerId}` },
  { name: 'region', asks: (j) => j.region !== null, js: (j, n) => n.region === j.region, sql: (j) => sql`n.region = ${j.region}` },
  {
    name: 'labels',
    asks: (j) => j.labels !== null && Object.keys(j.labels).length > 0,
    js: (j, n) => labelsMatch(j.labels!, n.labels),
    sql: (j) => sql`n.labels @> ${JSON.stringify(j.labels)}::jsonb`,
  },
  // What the node's agent says it takes (nodes.runtime); an agent that says nothing rules nothing out.
  {
    name: 'registry',
    asks: (j) => !!j.registry,
    js: (j, n) => !n.registries || n.registries.includes(j.registry!),
    sql: (j) => sql`coalesce(n.runtime->'registries' @> ${JSON.stringify([j.registry])}::jsonb, true)`,
  },
  {
    name: 'network',
    asks: (j) => !!j.network,
    js: (j, n) => !n.networks || n.networks.includes(j.network!),
    sql: (j) => sql`coalesce(n.runtime->'networks' @> ${JSON.stringify([j.network])}::jsonb, true)`,
  },
];

// ---------------------------------------------------------------------------------------------
// Rules on each GPU: which of a node's GPUs the job could take

const words = (s: string) => s.toLowerCase().split(/[\s-]+/).filter(Boolean);

/**
 * A requested model matches a product name when its words (split on spaces and dashes, without
 * case) stand in a row among the name's words: "H100" matches "NVIDIA H100 80GB HBM3", "A10"
 * does not match "NVIDIA A100-SXM4-40GB".
 */
export function modelMatches(requested: string, productName: string): boolean {
  const want = words(requested);
  const have = words(productName);
  if (!want.length) return true;
  outer: for (let i = 0; i + want.length <= have.length; i++) {
    for (let j = 0; j < want.length; j++) if (have[i + j] !== want[j]) continue outer;
    return true;
  }
  return false;
}

/** Remembers model matches: a pass asks the same (request, product name) pair many times. */
export class ModelMatcher {
  private cache = new Map<string, Map<string, boolean>>();
  matches(requested: string, productName: string): boolean {
    let byName = this.cache.get(requested);
    if (!byName) this.cache.set(requested, (byName = new Map()));
    let m = byName.get(productName);
    if (m === undefined) byName.set(productName, (m = modelMatches(requested, productName)));
    return m;
  }
}

/** "12.4" → 12004; null for anything else. */
export function parseCuda(v: string | null | undefined): number | null {
  const m = v?.match(/^(\d{1,4})\.(\d{1,3})/);
  return m ? Number(m[1]) * 1000 + Number(m[2]) : null;
}

export type GpuRuleName = 'gpu_model' | 'gpu_memory' | 'cuda';

export interface GpuRule {
  name: GpuRuleName;
  asks(job: JobRequest): boolean;
  js(job: JobRequest, gpu: GpuView, models: ModelMatcher): boolean;
  /** Over `gpus g`. */
  sql(job: JobRequest): SQL;
}

export const gpuRules: readonly GpuRule[] = [
  {
    name: 'gpu_model',
    asks: (j) => j.gpuModel !== null && words(j.gpuModel).length > 0,
    js: (j, g, models) => models.matches(j.gpuModel!, g.model),
    sql: (j) =>
      sql`strpos(' ' || trim(regexp_replace(lower(g.model), '[[:space:]-]+', ' ', 'g')) || ' ', ${` ${words(j.gpuModel!).join(' ')} `}) > 0`,
  },
  {
    name: 'gpu_memory',
    asks: (j) => j.gpuMinMemoryMb !== null,
    js: (j, g) => g.memoryMb >= j.gpuMinMemoryMb!,
    sql: (j) => sql`g.memory_mb >= ${j.gpuMinMemoryMb}`,
  },
  {
    name: 'cuda',
    asks: (j) => j.minCuda !== null,
    // An unknown CUDA version never passes.
    js: (j, g) => g.cuda !== null && g.cuda >= j.minCuda!,
    sql: (j) =>
      sql`(case when g.cuda_version ~ '^[0-9]{1,4}[.][0-9]{1,3}' then split_part(g.cuda_version, '.', 1)::int * 1000 + substring(split_part(g.cuda_version, '.', 2) from '^[0-9]+')::int >= ${j.minCuda} else false end)`,
  },
];

/** The GPU rules a job asks, as one SQL condition over `gpus g` (true when it asks none). */
export function gpuMatchSql(job: JobRequest, upTo: GpuRuleName | null = null): SQL {
  const parts: SQL[] = [];
  for (const r of gpuRules) {
    if (r.asks(job)) parts.push(r.sql(job));
    if (r.name === upTo) break;
  }
  return parts.length ? sql.join(parts, sql` and `) : sql`true`;
}

// ---------------------------------------------------------------------------------------------
// Rules on what is free and what it costs

/**
 * The job's price on a node per hour, in milli-micro-units so that fractional cores stay exact:
 * gpus × price per GPU-hour + cores × price per CPU-core-hour. Exact while below 2^53 (any
 * realistic price); the rare overflow is computed with BigInt.
 */
export function priceMilliMicros(gpuCount: number, cpuMillis: number, priceGpuHourMicros: number, priceCpuHourMicros: number): number {
  const n = gpuCount * priceGpuHourMicros * 1000 + cpuMillis * priceCpuHourMicros;
  if (Number.isSafeInteger(n)) return n;
  return Number(BigInt(gpuCount) * BigInt(priceGpuHourMicros) * 1000n + BigInt(cpuMillis) * BigInt(priceCpuHourMicros));
}

/** The same over `nodes n`. */
export const priceMilliSql = (job: JobRequest): SQL =>
  sql`(${job.gpuCount}::bigint * n.price_gpu_hour_micros * 1000 + ${job.cpuMillis}::bigint * n.price_cpu_hour_micros)`;

export type CapacityRuleName = 'cpu' | 'memory' | 'disk' | 'price';

export interface CapacityRule {
  name: CapacityRuleName;
  asks(job: JobRequest): boolean;
  js(job: JobRequest, node: NodeView): boolean;
  /** Over `nodes n`. */
  sql(job: JobRequest): SQL;
}

export const withinPrice = (job: JobRequest, priceMilli: number) => job.maxPriceMicros === null || priceMilli <= job.maxPriceMicros * 1000;

export const capacityRules: readonly CapacityRule[] = [
  {
    name: 'cpu',
    asks: () => true,
    js: (j, n) => n.freeCpuMillis >= j.cpuMillis,
    sql: (j) => sql`n.cpu_millis - n.allocated_cpu_millis >= ${j.cpuMillis}`,
  },
  {
    name: 'memory',
    asks: () => true,
    js: (j, n) => n.freeMemoryMb >= j.memoryMb,
    sql: (j) => sql`n.memory_mb - n.allocated_memory_mb >= ${j.memoryMb}`,
  },
  {
    name: 'disk',
    asks: (j) => j.diskMb > 0,
    js: (j, n) => n.freeDiskMb >= j.diskMb,
    sql: (j) => sql`n.disk_mb - n.allocated_disk_mb >= ${j.diskMb}`,
  },
  {
    name: 'price',
    asks: (j) => j.maxPriceMicros !== null,
    js: (j, n) => withinPrice(j, priceMilliMicros(j.gpuCount, j.cpuMillis, n.priceGpuHourMicros, n.priceCpuHourMicros)),
    sql: (j) => sql`${priceMilliSql(j)} <= ${j.maxPriceMicros}::bigint * 1000`,
  },
];

// ---------------------------------------------------------------------------------------------
// Rules on the job's own kind

/**
 * A task of a job array is placed only while fewer than its array's maxParallel tasks hold a
 * lease. JS: the pass counts what it places against the slots it read (free = max_parallel -
 * tasks_active). SQL: the lease transaction's guard over the array's row `alias` as it raises
 * tasks_active by `taking` (the CHECK jobs_tasks_active stands behind it).
 */
export const withinMaxParallel = {
  js: (array: { maxParallel: number; tasksActive: number }, taking: number) => array.tasksActive + taking <= array.maxParallel,
  sql: (alias: string, taking: SQL): SQL => sql`${col(alias, 'tasks_active')} + ${taking} <= ${col(alias, 'max_parallel')}`,
};

// ---------------------------------------------------------------------------------------------
// The client's credit: a lease is granted only against a hold on it (coordinator/ledger/leases.ts)

function formatSpan(seconds: number): string {
  const unit = (n: number, one: string) => `${n} ${one}${n === 1 ? '' : 's'}`;
  if (seconds % 3600 === 0) return unit(seconds / 3600, 'hour');
  if (seconds % 60 === 0) return unit(seconds / 60, 'minute');
  return unit(seconds, 'second');
}

/**
 * Whether a client's available credit (balance + credit limit - held) covers a lease's first
 * hold. Work that costs nothing needs no credit. JS over the planner's running count of each
 * client's credit in a batch; SQL over `ledger_accounts la` (the dry run).
 */
export const creditRule = {
  name: 'credit' as const,
  js: (holdMicros: number, availableMicros: number) => holdMicros <= 0 || holdMicros <= availableMicros,
  sql: (holdMicros: number, alias = 'la'): SQL =>
    sql`(${holdMicros}::bigint <= 0 or ${holdMicros}::bigint <= ${col(alias, 'credits_posted')} + ${col(alias, 'credit_limit')} - ${col(alias, 'debits_posted')} - ${col(alias, 'debits_pending')})`,
  /** The reason a job waits: `needs 0.10 of credit for its first 5 minutes at 1.20/hour, 0.05 available`. */
  describe: (holdMicros: number, seconds: number, priceMilliMicrosPerHour: number, availableMicros: number) =>
    `needs ${formatAmount(holdMicros)} of credit for its first ${formatSpan(seconds)} at ${formatAmount(Math.round(priceMilliMicrosPerHour / 1000))}/hour, ${formatAmount(Math.max(0, availableMicros))} available`,
};
