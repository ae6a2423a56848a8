import { sql } from 'drizzle-orm';
import type { GpuCounts, Pool, PoolGpuModel, PoolRegion } from '../../shared/pool.ts';
import { fromMicros } from '../../shared/money.ts';
import type { Clock } from '../clock.ts';
import { toNumber, type Database } from '../db/open.ts';
import { takesWork } from '../scheduler/rules.ts';
import { runsSql } from '../jobs/arrays.ts';

const n = toNumber;
const nullableNumber = (v: unknown) => (v === null || v === undefined ? null : Number(v));
const toDate = (v: unknown) => (v instanceof Date ? v : new Date(String(v)));
const round1 = (v: number) => Math.round(v * 10) / 10;
const emptyCounts = (): GpuCounts => ({ online: 0, free: 0, busy: 0, draining: 0, offline: 0 });

interface GpuGroupRow {
  by_region: unknown;
  region: string | null;
  model: string | null;
  is_mig: boolean | null;
  memory_mb: unknown;
  online: unknown;
  free: unknown;
  busy: unknown;
  draining: unknown;
  offline: unknown;
  memory_total_mb: unknown;
  avg_util: unknown;
  price_min: unknown;
  price_median: unknown;
  price_max: unknown;
}

/**
 * One pass over the GPUs of live nodes, grouped two ways at once (grouping sets): by model and
 * kind (a MIG profile, told apart by its memory, is a row of its own), and by region.
 */
function gpuGroups(database: Database) {
  // Free: idle where work can land (the scheduler's rule); idle elsewhere online counts as draining.
  const live = takesWork.sql('n');
  return database.rows<GpuGroupRow>(sql`
    select grouping(n.region) = 0 as by_region, n.region, g.model, g.mig is not null as is_mig,
      min(g.memory_mb) as memory_mb,
      count(*) filter (where n.status = 'online') as online,
      count(*) filter (where g.job_id is null and ${live}) as free,
      count(*) filter (where n.status = 'online' and g.job_id is not null) as busy,
      count(*) filter (where n.status = 'online' and g.job_id is null and not ${live}) as draining,
      count(*) filter (where n.status = 'offline') as offline,
      coalesce(sum(g.memory_mb) filter (where n.status = 'online'), 0) as memory_total_mb,
      avg(g.utilization_pct) filter (where n.status = 'online') as avg_util,
      min(n.price_gpu_hour_micros) filter (where g.job_id is null and ${live}) as price_min,
      percentile_disc(0.5) within group (order by n.price_gpu_hour_micros)
        filter (where g.job_id is null and ${live}) as price_median,
      max(n.price_gpu_hour_micros) filter (where g.job_id is null and ${live}) as price_max
    from gpus g join nodes n on n.id = g.node_id
    where n.status in ('online', 'offline')
    group by grouping sets ((g.model, g.mig is not null, case when g.mig is not null then g.memory_mb end), (n.region))`);
}

interface NodeGroupRow {
  region: string | null;
  online: unknown;
  offline: unknown;
  draining: unknown;
  cpu_millis: unknown;
  cpu_free_millis: unknown;
  memory_mb: unknown;
  memory_free_mb: unknown;
}

function nodeGroups(database: Database) {
  // Free capacity counts only where work can land (the scheduler's rule).
  const live = takesWork.sql('nodes');
  return database.rows<NodeGroupRow>(sql`
    select region,
      count(*) filter (where status = 'online') as online,
      count(*) filter (where status = 'offline') as offline,
      count(*) filter (where status = 'online' and draining) as draining,
      coalesce(sum(cpu_millis) filter (where status = 'online'), 0) as cpu_millis,
      coalesce(sum(cpu_millis - allocated_cpu_millis) filter (where ${live}), 0) as cpu_free_millis,
      coalesce(sum(memory_mb) filter (where status = 'online'), 0) as memory_mb,
      coalesce(sum(memory_mb - allocated_memory_mb) filter (where ${live}), 0) as memory_free_mb
    from nodes where status in ('online', 'offline')
    group by region`);
}

function queueGroups(database: Database) {
  // The predicate matches the jobs_queue partial index.
  return database.rows<{ model: string | null; jobs: unknown; gpus: unknown; oldest: unknown }>(sql`
    select gpu_model as model, count(*) as jobs, coalesce(sum(gpu_count), 0) as gpus, min(created_at) as oldest
    from jobs where status = 'queued' and ${runsSql()}
    group by gpu_model`);
}

function lastHour(database: Database, since: Date) {
  const t = since.toISOString();
  return database.rows<{ started: unknown; succeeded: unknown; failed: unknown }>(sql`
    select
      (select count(*) from jobs where started_at is not null and started_at >= ${t}::timestamptz and ${runsSql()}) as started,
      (select count(*) from jobs where finished_at is not null and finished_at >= ${t}::timestamptz and status = 'succeeded' and ${runsSql()}) as succeeded,
      (select count(*) from jobs where finished_at is not null and finished_at >= ${t}::timestamptz and status = 'failed' and ${runsSql()}) as failed`);
}

const byModelOrder = (a: PoolGpuModel, b: PoolGpuModel) =>
  b.online + b.offline - (a.online + a.offline) || a.model.localeCompare(b.model) || a.kind.localeCompare(b.kind) || a.memoryMb - b.memoryMb;

/** Computes the pool's figures now, from indexed queries over nodes, gpus and jobs. */
export async function computePool(database: Database, now: Date): Promise<Pool> {
  const [gpuRows, nodeRows, queueRows, hourRows] = await Promise.all([
    gpuGroups(database),
    nodeGroups(database),
    queueGroups(database),
    lastHour(database, new Date(now.getTime() - 3_600_000)),
  ]);

  const models: PoolGpuModel[] = [];
  const gpus = emptyCounts();
  const migDevices = emptyCounts();
  const regionGpus = new Map<string | null, { online: number; free: number; busy: number }>();
  for (const r of gpuRows) {
    const counts: GpuCounts = { online: n(r.online), free: n(r.free), busy: n(r.busy), draining: n(r.draining), offline: n(r.offline) };
    if (r.by_region) {
      regionGpus.set(r.region, { online: counts.online, free: counts.free, busy: counts.busy });
      continue;
    }
    const kind = r.is_mig ? 'mig' : 'gpu';
    const total = kind === 'mig' ? migDevices : gpus;
    for (const k of Object.keys(total) as (keyof GpuCounts)[]) total[k] += counts[k];
    const min = nullableNumber(r.price_min);
    models.push({
      model: r.model ?? '',
      kind,
      memoryMb: n(r.memory_mb),
      ...counts,
      memoryTotalMb: n(r.memory_total_mb),
      avgUtilizationPct: r.avg_util === null || r.avg_util === undefined ? null : round1(Number(r.avg_util)),
      pricePerGpuHour:
        min === null ? null : { min: fromMicros(min), median: fromMicros(n(r.price_median)), max: fromMicros(n(r.price_max)) },
    });
  }
  models.sort(byModelOrder);

  const nodes = { online: 0, offline: 0, draining: 0 };
  const cpu = { cores: 0, free: 0 };
  const memory = { totalMb: 0, freeMb: 0 };
  const regions: PoolRegion[] = [];
  for (const r of nodeRows) {
    const g = regionGpus.get(r.region) ?? { online: 0, free: 0, busy: 0 };
    const region: PoolRegion = {
      region: r.region,
      nodesOnline: n(r.online),
      nodesOffline: n(r.offline),
      gpusOnline: g.online,
      gpusFree: g.free,
      gpusBusy: g.busy,
      cpuCores: n(r.cpu_millis) / 1000,
      cpuCoresFree: n(r.cpu_free_millis) / 1000,
      memoryMb: n(r.memory_mb),
      memoryFreeMb: n(r.memory_free_mb),
    };
    regions.push(region);
    nodes.online += region.nodesOnline;
    nodes.offline += region.nodesOffline;
    nodes.draining += n(r.draining);
    cpu.cores += n(r.cpu_millis);
    cpu.free += n(r.cpu_free_millis);
    memory.totalMb += region.memoryMb;
    memory.freeMb += region.memoryFreeMb;
  }
  regions.sort((a, b) => b.nodesOnline - a.nodesOnline || String(a.region).localeCompare(String(b.region)));

  let depth = 0;
  let gpusRequested = 0;
  let oldest: Date | null = null;
  const byModel = queueRows
    .map((r) => {
      const at = toDate(r.oldest);
      depth += n(r.jobs);
      gpusRequested += n(r.gpus);
      if (!oldest || at < oldest) oldest = at;
      return { model: r.model, jobs: n(r.jobs), gpus: n(r.gpus), oldestQueuedAt: at.toISOString() };
    })
    .sort((a, b) => b.jobs - a.jobs || String(a.model).localeCompare(String(b.model)));
  const oldestAt = oldest as Date | null;
  const hour = hourRows[0];

  return {
    at: now.toISOString(),
    nodes,
    gpus,
    migDevices,
    models,
    cpu: { cores: cpu.cores / 1000, free: cpu.free / 1000 },
    memory,
    queue: {
      depth,
      gpusRequested,
      oldestQueuedAt: oldestAt?.toISOString() ?? null,
      oldestWaitSeconds: oldestAt ? Math.max(0, Math.round((now.getTime() - oldestAt.getTime()) / 1000)) : null,
      byModel,
    },
    lastHour: { started: n(hour?.started), succeeded: n(hour?.succeeded), failed: n(hour?.failed) },
    regions,
  };
}

interface Answer {
  pool: Pool;
  json: string;
  /** When its computation began (performance.now()): what it says is at least this old. */
  startedAt: number;
  /** The invalidation count when it began: an event since makes it stale whatever its age. */
  generation: number;
}

/**
 * The pool's figures as readers get them: no reader gets an answer that began computing more than
 * `maxAgeMs` before it asked, nor one begun before the last change told through invalidate() (a
 * node joined, came back, changed or freed capacity). One computation in flight serves every
 * reader it is fresh enough for, and a new one starts behind a crowd from half the age on, so
 * that readers seldom wait on the database. The answer's JSON is kept with it: serving it costs no
 * serialization. maxAgeMs 0 computes for every reader.
 */
export class PoolStats {
  private current: Answer | null = null;
  private inFlight: { startedAt: number; generation: number; answer: Promise<Answer> } | null = null;
  private generation = 0;

  constructor(
    private database: Database,
    private clock: Clock,
    private maxAgeMs: number,
  ) {}

  /** What is known is out of date: the next reader gets figures computed after this call. */
  invalidate(): void {
    this.generation++;
  }

  private fresh(a: { startedAt: number; generation: number }, now: number): boolean {
    return a.generation === this.generation && now - a.startedAt <= this.maxAgeMs;
  }

  private refresh(): Promise<Answer> {
    const startedAt = performance.now();
    const generation = this.generation;
    const answer = computePool(this.database, this.clock.now()).then((pool) => {
      const a: Answer = { pool, json: JSON.stringify(pool), startedAt, generation };
      // Two can overlap (one begun before an invalidation): keep the one begun last.
      if (!this.current || this.current.startedAt <= startedAt) this.current = a;
      return a;
    });
    const flight = { startedAt, generation, answer };
    this.inFlight = flight;
    void answer.then(
      () => this.inFlight === flight && (this.inFlight = null),
      () => this.inFlight === flight && (this.inFlight = null),
    );
    return answer;
  }

  /** Fresh figures, bypassing the cache (the history writer, tests). */
  async compute(): Promise<Pool> {
    return (await this.refresh()).pool;
  }

  private latest(): Promise<Answer> {
    const now = performance.now();
    const current = this.current;
    const flight = this.inFlight;
    if (current && this.fresh(current, now)) {
      // Past half its age: the next answer starts computing now, so it is there before this one is too old.
      if (!flight && now - current.startedAt >= this.maxAgeMs / 2) this.refresh().catch(() => {});
      return Promise.resolve(current);
    }
    if (flight && this.maxAgeMs > 0 && this.fresh(flight, now)) return flight.answer;
    return this.refresh();
  }

  async get(): Promise<Pool> {
    return (await this.latest()).pool;
  }

  /** The same figures as a JSON text, for the HTTP answer. */
  async json(): Promise<string> {
    return (await this.latest()).json;
  }
}
