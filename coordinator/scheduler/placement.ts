import { sql, type SQL } from 'drizzle-orm';
import { newId } from '../../shared/ids.ts';
import { imageRegistry } from '../../shared/images.ts';
import type { JobSpec } from '../../shared/jobs.ts';
import type { Clock } from '../clock.ts';
import type { Database, DbOrTx } from '../db/open.ts';
import { toNumber } from '../db/open.ts';
import { gpus, jobs, nodes, queueReasons } from '../db/schema/index.ts';
import { runsSql } from '../jobs/arrays.ts';
import { executeRows, leaseJobs, PlacementConflict, ts, type Placement } from '../jobs/transitions.ts';
import { describeFailure, type Logger } from '../log.ts';
import {
  countMatchingGpus,
  decide,
  describePending,
  fitsConstraints,
  matchingGpus,
  priceMilliMicros,
  withinPrice,
  ModelMatcher,
  parseCuda,
  type GpuView,
  type JobRequest,
  type NodeView,
  type RejectionCounts,
} from './feasibility.ts';
import { capacityRules, creditRule, takesWork, withinMaxParallel, type CapacityRule } from './rules.ts';
import { availableOf, ledgerId, readAccounts } from '../ledger/ledger.ts';
import { firstHold, type Billing } from '../ledger/leases.ts';
import { candidate, compareCandidates, type Candidate } from './scoring.ts';

const [cpuRule, memoryRule, diskRule] = capacityRules as [CapacityRule, CapacityRule, CapacityRule, CapacityRule];

type Constraints = NonNullable<JobSpec['constraints']>;

// One scheduling pass: load the nodes that take work and their free GPUs once, walk the queue in
// priority-then-age order in batches, place each batch in memory, and commit it in one
// transaction. A job that fits nowhere gets its reason and does not hold up the ones behind it.

/** A queued job as the pass reads it. */
export interface QueuedJob extends JobRequest {
  /** jobs.queue_shape: equal for jobs that fit exactly the same nodes. */
  shape: string;
  priority: number;
  createdAtMs: number;
  pendingReason: string | null;
  /** A task of a job array: its array, and how many of its tasks held leases when read. */
  array: { id: string; maxParallel: number; tasksActive: number } | null;
  /** Its owner: the client whose credit a lease holds. */
  accountId: string;
  timeoutSeconds: number;
}

export type PlanOutcome = { placed: true; node: NodeView; gpus: GpuView[] } | { placed: false; reason: string };

/** What the pass knows of the nodes, updated in memory as it places. */
export class PassState {
  readonly models = new ModelMatcher();
  private byId = new Map<string, NodeView>();
  /** Every node that takes work, cheapest CPU first (the candidates of a job with no GPU). */
  private all = new NodesByPrice((n) => n.priceCpuHourMicros);
  /** Nodes that had a free GPU when read, cheapest GPU first. */
  private gpuNodes = new NodesByPrice((n) => n.priceGpuHourMicros);
  /** gpuNodes with a free GPU of the requested model when read, by model; built when first asked. */
  private byRequestedModel = new Map<string, NodesByPrice>();
  /** Shapes that fit nowhere, with why: a job asking the same cannot fit either (capacity only shrinks in a pass). */
  readonly failed = new Map<string, string>();
  /** What each failed shape asks for (one of its jobs), for queue_reasons. */
  readonly requests = new Map<string, JobRequest>();

  constructor(
    nodes: NodeView[],
    private now: number,
    /** When it was read from the database (ms). */
    readonly loadedAt = now,
  ) {
    // Sorted once, then appended: inserting 10,000 one by one would move the arrays' tails each time.
    for (const n of [...nodes].sort(byPrice((x) => x.priceCpuHourMicros))) {
      this.byId.set(n.id, n);
      this.all.append(n);
    }
    for (const n of [...nodes].sort(byPrice((x) => x.priceGpuHourMicros))) if (n.freeGpus.length) this.gpuNodes.append(n);
  }

  get nodes(): readonly NodeView[] {
    return this.all.items;
  }

  private add(n: NodeView) {
    this.byId.set(n.id, n);
    this.all.add(n);
    if (!n.freeGpus.length) return;
    this.gpuNodes.add(n);
    for (const [model, list] of this.byRequestedModel) if (this.hasFreeGpuOf(n, model)) list.add(n);
  }

  /** A node's GPUs are mostly of one model: the rule is asked once per run of equal names. */
  private hasFreeGpuOf(n: NodeView, model: string): boolean {
    let last = '';
    for (const g of n.freeGpus) {
      if (g.model === last) continue;
      last = g.model;
      if (this.models.matches(model, g.model)) return true;
    }
    return false;
  }

  private remove(id: string) {
    if (!this.byId.delete(id)) return;
    this.all.delete(id);
    this.gpuNodes.delete(id);
    for (const list of this.byRequestedModel.values()) list.delete(id);
  }

  /**
   * The named nodes as read again (`fresh`: those of them that still take work; the others
   * leave). In place and in time proportional to the nodes named, not to the pool: passes come
   * back to back under load, and rebuilding the lookups of 10,000 nodes for each was most of
   * their cost.
   */
  replace(ids: readonly string[], fresh: readonly NodeView[]): void {
    for (const id of ids) this.remove(id);
    for (const n of fresh) this.add(n);
  }

  /** Starts another pass on this (kept) state: what fit nowhere last time may fit now. */
  beginPass(now: number): this {
    this.failed.clear();
    this.requests.clear();
    this.now = now;
    return this;
  }

  /** Upper bounds on what any node has free: a job above them cannot fit anywhere in this pass. */
  bounds(): { gpus: number; cpuMillis: number; memoryMb: number; minPriceGpu: number; minPriceCpu: number } {
    let g = 0;
    let c = 0;
    let m = 0;
    let pg = Number.MAX_SAFE_INTEGER;
    let pc = Number.MAX_SAFE_INTEGER;
    for (const n of this.all.items) {
      if (n.freeCpuMillis <= 0 || n.freeMemoryMb <= 0) continue;
      g = Math.max(g, n.freeGpus.length);
      c = Math.max(c, n.freeCpuMillis);
      m = Math.max(m, n.freeMemoryMb);
      pg = Math.min(pg, n.priceGpuHourMicros);
      pc = Math.min(pc, n.priceCpuHourMicros);
    }
    return { gpus: g, cpuMillis: c, memoryMb: m, minPriceGpu: pg === Number.MAX_SAFE_INTEGER ? 0 : pg, minPriceCpu: pc === Number.MAX_SAFE_INTEGER ? 0 : pc };
  }

  private candidatesFor(job: JobRequest): NodeView[] {
    if (job.nodeId !== null) {
      const n = this.byId.get(job.nodeId);
      return n ? [n] : [];
    }
    if (job.gpuCount === 0) return this.all.items;
    if (job.gpuModel === null) return this.gpuNodes.items;
    let list = this.byRequestedModel.get(job.gpuModel);
    if (!list) {
      const model = job.gpuModel;
      list = new NodesByPrice((n) => n.priceGpuHourMicros);
      // gpuNodes' order is the list's order: appended, it stays sorted.
      for (const n of this.gpuNodes.items) if (this.hasFreeGpuOf(n, model)) list.append(n);
      this.byRequestedModel.set(model, list);
    }
    return list.items;
  }

  /** Gives back what place() took for a job that is not placed after all (its client's credit is short). */
  unplace(job: JobRequest, node: NodeView, taken: GpuView[]): void {
    if (taken.length) node.freeGpus = [...node.freeGpus, ...taken].sort((a, b) => a.index - b.index);
    node.freeCpuMillis += job.cpuMillis;
    node.freeMemoryMb += job.memoryMb;
    node.freeDiskMb += job.diskMb;
  }

  /** Finds the best node for the job and takes its resources in memory; or says why none fits. */
  place(job: JobRequest & { shape?: string }): PlanOutcome {
    const shape = job.shape ?? shapeKey(job);
    const known = this.failed.get(shape);
    if (known !== undefined) return { placed: false, reason: known };
    const node = this.best(job);
    if (!node) {
      const reason = describePending(job, this.diagnose(job), this.all.items.length);
      this.failed.set(shape, reason);
      this.requests.set(shape, job);
      return { placed: false, reason };
    }
    const taken = job.gpuCount > 0 ? matchingGpus(job, node, this.models).slice(0, job.gpuCount) : [];
    const ids = new Set(taken.map((g) => g.id));
    node.freeGpus = node.freeGpus.filter((g) => !ids.has(g.id));
    node.freeCpuMillis -= job.cpuMillis;
    node.freeMemoryMb -= job.memoryMb;
    node.freeDiskMb -= job.diskMb;
    node.lastPlacedAtMs = this.now;
    return { placed: true, node, gpus: taken };
  }

  /**
   * The best node for the job, by scoring.ts's order, in one pass over the candidates that
   * allocates nothing: the cheap checks first, and a node that cannot beat the best so far on
   * price is not looked at further.
   */
  private best(job: JobRequest): NodeView | null {
    let best: Candidate | null = null;
    // Candidates come cheapest first by the one price the job pays most surely (GPU-hours, or
    // core-hours for a job with no GPU): once that part alone is above the best price found, or
    // the job's limit, no node further on can be cheaper, and the walk stops.
    const byGpu = job.gpuCount > 0;
    const limit = job.maxPriceMicros === null ? Infinity : job.maxPriceMicros * 1000;
    for (const node of this.candidatesFor(job)) {
      const floor = byGpu ? job.gpuCount * node.priceGpuHourMicros * 1000 : job.cpuMillis * node.priceCpuHourMicros;
      if (floor > limit || (best && floor > best.priceMilliMicros)) break;
      if (!cpuRule.js(job, node) || !memoryRule.js(job, node) || !diskRule.js(job, node) || node.freeGpus.length < job.gpuCount) continue;
      const price = priceMilliMicros(job.gpuCount, job.cpuMillis, node.priceGpuHourMicros, node.priceCpuHourMicros);
      if (!withinPrice(job, price)) continue;
      if (best && price > best.priceMilliMicros) continue;
      if (!fitsConstraints(job, node)) continue;
      if (job.gpuCount > 0 && countMatchingGpus(job, node, this.models) < job.gpuCount) continue;
      const c = candidate(node, price, job.gpuCount, job.cpuMillis, job.memoryMb);
      if (!best || compareCandidates(c, best) < 0) best = c;
    }
    return best?.node ?? null;
  }

  /** Why a job asking this would wait now, without placing anything. */
  explainRequest(job: JobRequest): string | null {
    if (this.best(job)) return null;
    return describePending(job, this.diagnose(job), this.all.items.length);
  }

  /** For a job that fits nowhere: how many nodes broke each rule first (once per shape and pass). */
  private diagnose(job: JobRequest): RejectionCounts {
    const counts: RejectionCounts = {};
    for (const node of this.candidatesFor(job)) {
      const d = decide(job, node, this.models);
      if (!d.fits) counts[d.reason] = (counts[d.reason] ?? 0) + 1;
    }
    return counts;
  }
}

const byPrice = (price: (n: NodeView) => number) => (a: NodeView, b: NodeView) =>
  price(a) - price(b) || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0);

/**
 * Nodes ordered by a price, then id, with add and delete by id: a binary search and one move of
 * the array's tail, microseconds for 10,000 nodes.
 */
class NodesByPrice {
  readonly items: NodeView[] = [];
  /** The key each node was filed under (its view's price may have changed since). */
  private keys = new Map<string, number>();

  constructor(private price: (n: NodeView) => number) {}

  /** Where (key, id) is or would go. */
  private find(key: number, id: string): number {
    let lo = 0;
    let hi = this.items.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      const m = this.items[mid]!;
      const mk = this.keys.get(m.id)!;
      if (mk < key || (mk === key && m.id < id)) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  add(n: NodeView) {
    if (this.keys.has(n.id)) return;
    const key = this.price(n);
    const at = this.find(key, n.id);
    this.keys.set(n.id, key);
    this.items.splice(at, 0, n);
  }

  /** Adds a node known to sort after every node here. */
  append(n: NodeView) {
    this.keys.set(n.id, this.price(n));
    this.items.push(n);
  }

  delete(id: string) {
    const key = this.keys.get(id);
    if (key === undefined) return;
    const at = this.find(key, id);
    this.items.splice(at, 1);
    this.keys.delete(id);
  }
}

function shapeKey(j: JobRequest): string {
  return `${j.gpuCount}|${j.gpuModel}|${j.gpuMinMemoryMb}|${j.minCuda}|${j.cpuMillis}|${j.memoryMb}|${j.diskMb}|${j.region}|${j.nodeId}|${j.providerId}|${j.maxPriceMicros}|${j.labels ? JSON.stringify(j.labels) : ''}|${j.registry ?? ''}|${j.network ?? ''}`;
}

// ---------------------------------------------------------------------------------------------
// Reading

/** The nodes that take work (online, not draining) and their free GPUs, in two queries. */
export async function loadPassState(db: DbOrTx, now: number): Promise<PassState> {
  return new PassState(await loadNodeViews(db, null), now);
}

/**
 * The kept state with the named nodes read again (those that joined, came back, changed or had
 * capacity freed since it was read): a node that no longer takes work leaves it.
 */
export async function refreshNodes(db: DbOrTx, state: PassState, ids: readonly string[]): Promise<void> {
  state.replace(ids, await loadNodeViews(db, ids));
}

/** Nodes (or their GPU rows) made into views between two turns of the event loop. */
const yieldEvery = 1000;

/** NodeViews of the nodes that take work: all of them, or those of `only`. */
async function loadNodeViews(db: DbOrTx, only: readonly string[] | null): Promise<NodeView[]> {
  // One text parameter whatever the count (ids hold no comma): one bind, one plan.
  const idList = only ? only.join(',') : '';
  const onlyNodes = only ? sql`and id = any(string_to_array(${idList}, ','))` : sql``;
  const onlyGpus = only ? sql`and g.node_id = any(string_to_array(${idList}, ','))` : sql``;
  const nodeRows = await executeRows<{
    id: string;
    account_id: string;
    labels: Record<string, string> | null;
    region: string | null;
    pg: unknown;
    pc: unknown;
    free_cpu: number;
    free_mem: number;
    free_disk: number;
    last_placed_ms: number | null;
    registries: string[] | string | null;
    networks: string[] | string | null;
  }>(
    db,
    sql`select id, account_id, labels, region, price_gpu_hour_micros as pg, price_cpu_hour_micros as pc,
          runtime->'registries' as registries, runtime->'networks' as networks,
          cpu_millis - allocated_cpu_millis as free_cpu, memory_mb - allocated_memory_mb as free_mem,
          disk_mb - allocated_disk_mb as free_disk,
          (extract(epoch from last_placed_at) * 1000)::float8 as last_placed_ms
        from ${nodes} where ${takesWork.sql('nodes')} ${onlyNodes}`,
  );
  // Free GPUs one text per node (fields split by \x1f, GPUs by \x1e): a tenth of the rows to
  // parse when the pool is idle and every GPU is free.
  const gpuRows = await executeRows<{ node_id: string; free: string }>(
    db,
    sql`select g.node_id, string_agg(g.id || chr(31) || g.index || chr(31) || g.model || chr(31) || g.memory_mb || chr(31) || coalesce(g.cuda_version, '') || chr(31) || (g.mig is not null)::int, chr(30) order by g.index) as free
        from ${gpus} g join ${nodes} n on n.id = g.node_id
        where g.job_id is null and ${takesWork.sql('n')} ${onlyGpus}
        group by g.node_id`,
  );
  const views = new Map<string, NodeView>();
  // Thousands of nodes are read in one go: the event loop is let go every so many, so that
  // heartbeats and reads are answered in between instead of after the whole read.
  let sinceYield = 0;
  const breathe = async () => {
    if (++sinceYield < yieldEvery) return;
    sinceYield = 0;
    await new Promise<void>((resolve) => setImmediate(resolve));
  };
  for (const r of nodeRows) {
    await breathe();
    views.set(r.id, {
      id: r.id,
      accountId: r.account_id,
      labels: typeof r.labels === 'string' ? JSON.parse(r.labels) : (r.labels ?? {}),
      region: r.region,
      priceGpuHourMicros: toNumber(r.pg),
      priceCpuHourMicros: toNumber(r.pc),
      freeCpuMillis: Number(r.free_cpu),
      freeMemoryMb: Number(r.free_mem),
      freeDiskMb: Number(r.free_disk),
      freeGpus: [],
      lastPlacedAtMs: r.last_placed_ms === null ? 0 : Number(r.last_placed_ms),
      registries: typeof r.registries === 'string' ? JSON.parse(r.registries) : r.registries,
      networks: typeof r.networks === 'string' ? JSON.parse(r.networks) : r.networks,
    });
  }
  const cuda = new Map<string, number | null>();
  for (const r of gpuRows) {
    await breathe();
    const view = views.get(r.node_id);
    if (!view) continue;
    for (const g of r.free.split('\x1e')) {
      const [id, index, model, memoryMb, cudaVersion, mig] = g.split('\x1f') as [string, string, string, string, string, string];
      let c = cuda.get(cudaVersion);
      if (c === undefined) cuda.set(cudaVersion, (c = parseCuda(cudaVersion)));
      view.freeGpus.push({ id, index: Number(index), model, memoryMb: Number(memoryMb), cuda: c, ...(mig === '1' ? { mig: true } : {}) });
    }
  }
  return [...views.values()];
}

interface Cursor {
  priority: number;
  id: string;
}

type QueueRow = {
  id: string;
  account_id: string;
  timeout_s: unknown;
  queue_shape: string;
  priority: number;
  created_ms: number;
  cpu_millis: number;
  memory_mb: number;
  disk_mb: number;
  gpu_count: number;
  gpu_model: string | null;
  gpu_min_memory_mb: number | null;
  max_price_micros: unknown;
  region: string | null;
  pending_reason: string | null;
  constraints: Constraints | string | null;
  min_cuda: string | null;
  image: string;
  network: string | null;
  parent_id: string | null;
  array_max: number | null;
  array_active: number | null;
};

/**
 * The next batch of the queue in priority-then-age order after `cursor`. With `bounds`, jobs that
 * cannot fit any node in this pass by size or by price alone are left in the database, unless
 * their shape has no reason yet (a shape not seen before): those come, to get one. Shapes
 * already found to fit nowhere in this pass are left there too.
 */
export async function loadQueueBatch(
  db: DbOrTx,
  cursor: Cursor | null,
  limit: number,
  bounds: ReturnType<PassState['bounds']> | null,
  skipShapes: ReadonlySet<string> = new Set(),
  skipArrays: ReadonlySet<string> = new Set(),
): Promise<{ jobs: QueuedJob[]; cursor: Cursor | null }> {
  const after: SQL = cursor
    ? sql`and (-priority, id) > (${-cursor.priority}::int, ${cursor.id}::text)`
    : sql``;
  const rows = await executeRows<QueueRow>(
    db,
    sql`select id, account_id, coalesce((spec->>'timeoutSeconds')::int, 3600) as timeout_s, queue_shape, priority, (extract(epoch from created_at) * 1000)::float8 as created_ms,
          cpu_millis, memory_mb, disk_mb, gpu_count, gpu_model, gpu_min_memory_mb, max_price_micros, region, pending_reason,
          spec->'constraints' as constraints, spec->'resources'->'gpu'->>'minCudaVersion' as min_cuda,
          spec->>'image' as image, spec->>'network' as network, parent_id,
          -- In the select list: read for the rows returned only, never for those the filters drop.
          case when parent_id is not null then (select p.max_parallel from ${jobs} p where p.id = ${jobs}.parent_id) end as array_max,
          case when parent_id is not null then (select p.tasks_active from ${jobs} p where p.id = ${jobs}.parent_id) end as array_active
        from ${jobs}
        where status = 'queued' ${after}
          and ${runsSql()}
          ${bounds ? withinBounds(bounds) : sql``}
          ${skipShapes.size ? sql`and queue_shape not in (${sql.join([...skipShapes].map((x) => sql`${x}`), sql`, `)})` : sql``}
          ${skipArrays.size ? sql`and (${jobs}.parent_id is null or ${jobs}.parent_id not in (${sql.join([...skipArrays].map((x) => sql`${x}`), sql`, `)}))` : sql``}
        order by (-priority), id
        limit ${limit}`,
  );
  const last = rows[rows.length - 1];
  return {
    jobs: rows.map(toQueuedJob),
    cursor: last ? { priority: Number(last.priority), id: last.id } : null,
  };
}

function withinBounds(b: ReturnType<PassState['bounds']>): SQL {
  return sql`and (not exists (select 1 from ${queueReasons} r where r.shape = ${jobs}.queue_shape) or (
    gpu_count <= ${b.gpus} and cpu_millis <= ${b.cpuMillis} and memory_mb <= ${b.memoryMb}
    and (max_price_micros is null
      or max_price_micros::numeric * 1000 >= gpu_count::numeric * ${b.minPriceGpu} * 1000 + cpu_millis::numeric * ${b.minPriceCpu})))`;
}

function toQueuedJob(r: QueueRow): QueuedJob {
  const c = (typeof r.constraints === 'string' ? JSON.parse(r.constraints) : r.constraints) as Constraints | null;
  return {
    id: r.id,
    shape: r.queue_shape,
    priority: Number(r.priority),
    createdAtMs: Number(r.created_ms),
    pendingReason: r.pending_reason,
    array: r.parent_id && r.array_max !== null ? { id: r.parent_id, maxParallel: Number(r.array_max), tasksActive: Number(r.array_active) } : null,
    accountId: r.account_id,
    timeoutSeconds: toNumber(r.timeout_s),
    cpuMillis: Number(r.cpu_millis),
    memoryMb: Number(r.memory_mb),
    diskMb: Number(r.disk_mb),
    gpuCount: Number(r.gpu_count),
    gpuModel: r.gpu_model,
    gpuMinMemoryMb: r.gpu_min_memory_mb === null ? null : Number(r.gpu_min_memory_mb),
    minCuda: parseCuda(r.min_cuda),
    labels: c?.nodeLabels && Object.keys(c.nodeLabels).length ? c.nodeLabels : null,
    region: r.region ?? c?.region ?? null,
    nodeId: c?.nodeId ?? null,
    providerId: c?.providerId ?? null,
    maxPriceMicros: r.max_price_micros === null ? null : toNumber(r.max_price_micros),
    registry: imageRegistry(r.image),
    network: r.network ?? 'bridge',
  };
}

// ---------------------------------------------------------------------------------------------
// A pass

export interface PassDeps {
  database: Database;
  clock: Clock;
  log: Logger;
  leaseTtlSeconds: number;
  batchSize: number;
  /** Called after a batch committed, with the nodes that got leases. */
  onLeased?: (nodeIds: string[]) => void;
  /**
   * Read every queued job, not only those that could fit what is free: refreshes the reasons of
   * the ones that cannot (the loop does this every few seconds, tests on every pass they run).
   */
  full?: boolean;
  /**
   * The node snapshot kept between passes by the loop: reused while younger than maxAgeMs, since
   * every write is guarded anyway (a stale snapshot can only miss capacity freed meanwhile, or
   * conflict and be read again). Passes come back to back under load; reading 10,000 nodes for
   * each would be most of their cost.
   */
  snapshot?: { state: PassState | null; maxAgeMs: number; stale?: StaleNodes };
  /** Re-explain the shapes a pass did not read, on a fresh snapshot, at most this often. */
  refresh?: { lastAt: number; everyMs: number };
  /** What this scheduler last wrote as each shape's reason (kept across passes by the loop). */
  reasons?: Map<string, string>;
  /** Called after each committed batch with how many it placed (the benchmark's counter). */
  onBatch?: (placed: number) => void;
  /** The billing period and the platform's fee leases are granted with (default: half a TTL, no fee). */
  billing?: { periodSeconds: number; feeBasisPoints: number } | undefined;
  /** Tests: called between planning a batch and committing it. */
  beforeCommit?: () => Promise<void> | void;
}

/** Nodes that changed since the snapshot was read (told by events): read again before the next pass. */
export interface StaleNodes {
  /** Every node (an event that names none). */
  all: boolean;
  ids: Set<string>;
}

/**
 * Most changed nodes one pass reads again (about 50 ms here): under heavy churn (thousands of
 * jobs ending a second) the rest wait for the next pass, so no pass pays for a whole reload.
 */
const maxRefreshedNodes = 500;

export interface PassResult {
  /** How old the node snapshot the pass placed on was (0: read for it). */
  snapshotAgeMs?: number;
  placed: number;
  unplaced: number;
  batches: number;
  conflicts: number;
}

/** Channel of the NOTIFY that wakes long-polls on other replicas; the payload is node ids, comma-separated. */
export const leaseChannel = 'gantry_lease';

const retryableCodes = new Set(['23514', '40001', '40P01']);

function isRetryable(err: unknown): boolean {
  if (err instanceof PlacementConflict) return true;
  const code = (err as { cause?: { code?: string }; code?: string })?.cause?.code ?? (err as { code?: string })?.code;
  return typeof code === 'string' && retryableCodes.has(code);
}

/** Runs one pass over the queue. Safe with another scheduler running: every write is guarded. */
export async function schedulePass(deps: PassDeps): Promise<PassResult> {
  const { db } = deps.database;
  const result: PassResult = { placed: 0, unplaced: 0, batches: 0, conflicts: 0 };
  const now = deps.clock.now().getTime();
  const kept = deps.snapshot;
  // Taken before reading: what changes while this pass reads and places is read by the next.
  const stale = kept?.stale;
  const reuse = !deps.full && !stale?.all && kept?.state && now - kept.state.loadedAt < kept.maxAgeMs;
  const staleIds: string[] = [];
  if (stale) {
    stale.all = false;
    if (!reuse) stale.ids.clear();
    for (const id of stale.ids) {
      if (staleIds.length === maxRefreshedNodes) break;
      staleIds.push(id);
    }
    for (const id of staleIds) stale.ids.delete(id);
  }
  let state = reuse ? kept!.state!.beginPass(now) : await loadPassState(db, now);
  if (reuse && staleIds.length) await refreshNodes(db, state, staleIds);
  if (kept) kept.state = state;
  result.snapshotAgeMs = now - state.loadedAt;
  /** Shapes that fit nowhere in this pass, kept across a re-planned batch (capacity only shrank). */
  const failed = new Map<string, string>();
  /** Job arrays holding as many leases as they may: their other tasks wait (and are not read again this pass). */
  const fullArrays = new Set<string>();
  let cursor: Cursor | null = null;
  const read = () => loadQueueBatch(db, cursor, deps.batchSize, deps.full ? null : state.bounds(), new Set(failed.keys()), fullArrays);
  for (;;) {
    let batch = await read();
    if (!batch.jobs.length) break;
    for (let attempt = 0; ; attempt++) {
      const full = new Set<string>();
      const at = deps.clock.now();
      const credit = await loadCredit(db, batch.jobs);
      const { placements, creditWaits } = plan(state, batch.jobs, full, credit, billingOf(deps), at);
      try {
        if (deps.beforeCommit) await deps.beforeCommit();
        await commitBatch(deps, placements, at);
        if (creditWaits.length) await explainCredit(deps, creditWaits);
        for (const [shape, reason] of state.failed) failed.set(shape, reason);
        for (const id of full) fullArrays.add(id);
        result.placed += placements.length;
        result.unplaced += batch.jobs.length - placements.length;
        result.batches++;
        if (placements.length) deps.onLeased?.([...new Set(placements.map((p) => p.nodeId))]);
        deps.onBatch?.(placements.length);
        break;
      } catch (err) {
        if (!isRetryable(err) || attempt >= 4) throw err;
        // Something moved under the plan: nothing of it was committed. Look again and re-plan.
        result.conflicts++;
        deps.log.info('placement batch conflicted; planning it again', { error: describeFailure(err).split('\n')[0], attempt });
        state = await loadPassState(db, deps.clock.now().getTime());
        if (kept) kept.state = state;
        for (const [shape, reason] of failed) state.failed.set(shape, reason);
        batch = await read();
        if (!batch.jobs.length) break;
      }
    }
    if (batch.jobs.length < deps.batchSize) break;
    cursor = batch.cursor;
  }
  const at = deps.clock.now();
  await explain(deps, state, at);
  // On the kept state too: it is read again where events said nodes changed.
  if (deps.refresh && at.getTime() - deps.refresh.lastAt >= deps.refresh.everyMs) {
    deps.refresh.lastAt = at.getTime();
    await refreshReasons(deps, state, at);
  }
  return result;
}

const billingOf = (deps: PassDeps): Billing => ({
  leaseTtlSeconds: deps.leaseTtlSeconds,
  periodSeconds: deps.billing?.periodSeconds ?? Math.max(1, Math.floor(deps.leaseTtlSeconds / 2)),
  feeBasisPoints: deps.billing?.feeBasisPoints ?? 0,
});

/** What each client of the batch has available now (one read; the grant's hold re-checks under its lock). */
async function loadCredit(db: DbOrTx, queue: QueuedJob[]): Promise<Map<string, number>> {
  const owners = [...new Set(queue.map((j) => j.accountId))];
  const found = await readAccounts(db, owners.map(ledgerId.client));
  return new Map(owners.map((a) => {
    const acct = found.get(ledgerId.client(a));
    return [a, acct ? availableOf(acct) : 0];
  }));
}

interface CreditWait {
  jobId: string;
  shape: string;
  reason: string;
}

/**
 * Places the batch in memory. A task whose array already holds maxParallel leases waits without
 * a reason for its shape (it fits; its array is full), and its array goes into `fullArrays`, so
 * that the rest of the pass reads past its tasks. Each lease that costs something holds its
 * client's credit: the planner counts each client's available credit down across the batch, and
 * a job whose hold it does not cover is not placed (its node's resources go back) and waits with
 * the reason why.
 */
function plan(
  state: PassState,
  queue: QueuedJob[],
  fullArrays: Set<string>,
  credit: Map<string, number>,
  billing: Billing,
  at: Date,
): { placements: Placement[]; creditWaits: CreditWait[] } {
  const placements: Placement[] = [];
  const creditWaits: CreditWait[] = [];
  const available = new Map(credit);
  const taking = new Map<string, number>();
  for (const job of queue) {
    if (job.array) {
      const n = taking.get(job.array.id) ?? 0;
      if (!withinMaxParallel.js(job.array, n + 1)) {
        fullArrays.add(job.array.id);
        continue;
      }
    }
    const out = state.place(job);
    if (!out.placed) continue;
    const leaseId = newId('lease');
    const hold = firstHold(
      {
        leaseId,
        gpuCount: out.gpus.length,
        cpuMillis: job.cpuMillis,
        priceGpuHourMicros: out.node.priceGpuHourMicros,
        priceCpuHourMicros: out.node.priceCpuHourMicros,
        timeoutSeconds: job.timeoutSeconds,
      },
      at,
      billing,
    );
    if (hold) {
      const left = available.get(job.accountId) ?? 0;
      if (!creditRule.js(hold.micros, left)) {
        state.unplace(job, out.node, out.gpus);
        const price = priceMilliMicros(out.gpus.length, job.cpuMillis, out.node.priceGpuHourMicros, out.node.priceCpuHourMicros);
        const reason = creditRule.describe(hold.micros, hold.seconds, price, left);
        if (reason !== job.pendingReason) creditWaits.push({ jobId: job.id, shape: job.shape, reason });
        continue;
      }
      available.set(job.accountId, left - hold.micros);
    }
    placements.push({
      jobId: job.id,
      nodeId: out.node.id,
      gpuIds: out.gpus.map((g) => g.id),
      leaseId,
      cpuMillis: job.cpuMillis,
      memoryMb: job.memoryMb,
      diskMb: job.diskMb,
      priceGpuHourMicros: out.node.priceGpuHourMicros,
      priceCpuHourMicros: out.node.priceCpuHourMicros,
      arrayId: job.array?.id ?? null,
      hold: hold ? { hold, clientId: job.accountId, providerId: out.node.accountId } : null,
    });
    if (job.array) taking.set(job.array.id, (taking.get(job.array.id) ?? 0) + 1);
  }
  return { placements, creditWaits };
}

/**
 * Writes why jobs wait for credit: on the job itself (credit is its owner's, not its shape's).
 * Their shape fits a node, so a reason kept for the shape is stale: dropped, so the job's shows.
 */
async function explainCredit(deps: PassDeps, waits: CreditWait[]): Promise<void> {
  const { db } = deps.database;
  for (const part of chunks(waits, 1000)) {
    await db.execute(sql`update ${jobs} set pending_reason = v.reason
      from jsonb_to_recordset(${JSON.stringify(part.map((w) => ({ id: w.jobId, reason: w.reason })))}::jsonb) as v(id text, reason text)
      where ${jobs}.id = v.id and ${jobs}.status = 'queued'`);
  }
  const shapes = [...new Set(waits.map((w) => w.shape))];
  for (const part of chunks(shapes, 1000)) {
    await db.execute(sql`delete from ${queueReasons} where shape in (${sql.join(part.map((x) => sql`${x}`), sql`, `)})`);
  }
  for (const shape of shapes) deps.reasons?.delete(shape);
}

async function commitBatch(deps: PassDeps, placements: Placement[], at: Date): Promise<void> {
  if (!placements.length) return;
  const expiresAt = new Date(at.getTime() + deps.leaseTtlSeconds * 1000);
  await deps.database.db.transaction(async (tx) => {
    await leaseJobs(tx, placements, expiresAt, at);
    if (deps.database.driver === 'postgres') {
      for (const chunk of chunks([...new Set(placements.map((p) => p.nodeId))], 200)) {
        await tx.execute(sql`select pg_notify(${leaseChannel}, ${chunk.join(',')})`);
      }
    }
  });
}

/**
 * Writes why the jobs of each shape that fit nowhere wait: one queue_reasons row per shape, only
 * where it changed since this scheduler last wrote it (every shape on a full pass, which also
 * drops the rows of shapes no job waits with any more).
 */
async function explain(deps: PassDeps, state: PassState, at: Date): Promise<void> {
  const memo = deps.reasons;
  const changed = [...state.failed].filter(([shape, reason]) => deps.full || !memo || memo.get(shape) !== reason);
  const { db } = deps.database;
  for (const part of chunks(changed, 500)) {
    await db
      .insert(queueReasons)
      .values(part.map(([shape, reason]) => ({ shape, reason, request: requestJson(state.requests.get(shape)), updatedAt: at })))
      .onConflictDoUpdate({
        target: queueReasons.shape,
        set: { reason: sql`excluded.reason`, request: sql`excluded.request`, updatedAt: sql`excluded.updated_at` },
        setWhere: sql`${queueReasons.reason} is distinct from excluded.reason`,
      });
  }
  if (memo) {
    for (const [shape, reason] of changed) memo.set(shape, reason);
    if (memo.size > 50_000) memo.clear();
  }
  if (deps.full) {
    await db.execute(sql`delete from ${queueReasons} q
      where not exists (select 1 from ${jobs} j where j.status = 'queued' and j.queue_shape = q.shape)`);
  }
}

const requestJson = (r: JobRequest | undefined): Record<string, unknown> => {
  if (!r) return {};
  const { id: _id, ...rest } = r as JobRequest & { shape?: string; priority?: number; createdAtMs?: number; pendingReason?: string | null };
  const { shape: _s, priority: _p, createdAtMs: _c, pendingReason: _r, accountId: _a, timeoutSeconds: _t, ...request } = rest as Record<string, unknown>;
  return request;
};

/** Most shapes whose reason one refresh works out again. */
const refreshLimit = 100;

/**
 * Works out again why the shapes this pass did not read wait (the queue's bounds left their jobs
 * in the database), from what queue_reasons says they ask for: nodes that came, went or changed
 * price show in their reasons without a read of their jobs. Oldest first, a bounded number a time.
 */
export async function refreshReasons(deps: Pick<PassDeps, 'database' | 'reasons'>, state: PassState, at: Date): Promise<number> {
  if (!(await deps.database.db.select({ s: queueReasons.shape }).from(queueReasons).limit(1)).length) return 0;
  const { db } = deps.database;
  const rows = await db.select().from(queueReasons).orderBy(queueReasons.updatedAt).limit(refreshLimit);
  // Shapes no job waits with any more go first (cheap: the queue's shape index).
  const gone = await executeRows<{ shape: string }>(
    db,
    sql`delete from ${queueReasons} q where q.shape in (${sql.join(rows.map((r) => sql`${r.shape}`), sql`, `)})
        and not exists (select 1 from ${jobs} j where j.status = 'queued' and j.queue_shape = q.shape) returning q.shape`,
  );
  const goneSet = new Set(gone.map((g) => g.shape));
  for (const shape of goneSet) deps.reasons?.delete(shape);
  const updates: { shape: string; reason: string }[] = [];
  const touched: string[] = [];
  for (const row of rows) {
    if (state.failed.has(row.shape) || goneSet.has(row.shape)) continue;
    const request = { id: row.shape, ...(row.request as object) } as JobRequest;
    if (typeof request.gpuCount !== 'number') continue;
    const reason = state.explainRequest(request);
    // One that fits now is placed by the next pass (its jobs pass the bounds): nothing to write.
    if (reason === null) continue;
    if (reason !== row.reason) updates.push({ shape: row.shape, reason });
    else touched.push(row.shape);
  }
  for (const part of chunks(updates, 500)) {
    await db.execute(sql`update ${queueReasons} set reason = v.reason, updated_at = ${ts(at)}
      from jsonb_to_recordset(${JSON.stringify(part)}::jsonb) as v(shape text, reason text) where ${queueReasons}.shape = v.shape`);
  }
  // Unchanged ones go to the back of the line, so that every shape gets its turn.
  for (const part of chunks(touched, 1000)) {
    await db.execute(sql`update ${queueReasons} set updated_at = ${ts(at)}
      where shape in (${sql.join(part.map((x) => sql`${x}`), sql`, `)})`);
  }
  for (const u of updates) deps.reasons?.set(u.shape, u.reason);
  return updates.length;
}

function chunks<T>(items: T[], size: number): T[][] {
  const out: T[][] = [];
  for (let i = 0; i < items.length; i += size) out.push(items.slice(i, i + size));
  return out;
}
