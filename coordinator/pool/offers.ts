import { sql, type SQL } from 'drizzle-orm';
import { imageRegistry } from '../../shared/images.ts';
import type { JobSpec } from '../../shared/jobs.ts';
import { formatAmount, fromMicros, toMicros } from '../../shared/money.ts';
import type { ConstraintName, DryRun, Offer, OffersQuery, RuledOut, Shape } from '../../shared/pool.ts';
import { toNumber, type Database } from '../db/open.ts';
import { capacityRules, creditRule, gpuMatchSql, nodeRules, parseCuda, priceMilliMicros, priceMilliSql, takesWork, type JobRequest } from '../scheduler/rules.ts';
import { leaseCostMicros } from '../jobs/metering.ts';
import { ledgerId } from '../ledger/ledger.ts';

const n = toNumber;

/** What a client asks for, from offer filters or a job spec: the one input of both answers. */
export interface Ask {
  gpus: number;
  cpuMillis: number;
  memoryMb: number;
  /** The job's disk budget (offers by filter ask none). */
  diskMb?: number | undefined;
  gpuModel?: string | undefined;
  gpuMinMemoryMb?: number | undefined;
  minCudaVersion?: string | undefined;
  maxPriceMicros?: number | undefined;
  region?: string | undefined;
  labels?: Record<string, string> | undefined;
  nodeId?: string | undefined;
  providerId?: string | undefined;
  registry?: string | undefined;
  network?: string | undefined;
}

export function askFromQuery(q: OffersQuery): Ask {
  return {
    gpus: q.gpus ?? 1,
    cpuMillis: Math.round((q.cpu ?? 0) * 1000),
    memoryMb: q.memoryMb ?? 0,
    gpuModel: q.gpuModel,
    gpuMinMemoryMb: q.minGpuMemoryMb,
    maxPriceMicros: q.maxPricePerHour === undefined ? undefined : toMicros(q.maxPricePerHour),
    region: q.region,
  };
}

export function askFromSpec(spec: JobSpec): Ask {
  const r = spec.resources;
  return {
    gpus: r.gpus,
    cpuMillis: Math.round(r.cpu * 1000),
    memoryMb: r.memoryMb,
    diskMb: r.diskMb,
    gpuModel: r.gpu?.model,
    gpuMinMemoryMb: r.gpu?.minMemoryMb,
    minCudaVersion: r.gpu?.minCudaVersion,
    maxPriceMicros: spec.maxPricePerHour === undefined ? undefined : toMicros(spec.maxPricePerHour),
    region: spec.constraints?.region,
    labels: spec.constraints?.nodeLabels,
    nodeId: spec.constraints?.nodeId,
    providerId: spec.constraints?.providerId,
    registry: imageRegistry(spec.image),
    network: spec.network,
  };
}

const shapeOf = (a: Ask): Shape => ({ gpus: a.gpus, cpu: a.cpuMillis / 1000, memoryMb: a.memoryMb });

// The scheduler's matching rules in their SQL form (coordinator/scheduler/rules.ts), so that
// offers and dry runs over thousands of nodes are one query each.

/** The ask as the rules read a job. */
function requestOf(a: Ask): JobRequest {
  return {
    id: 'ask',
    cpuMillis: a.cpuMillis,
    memoryMb: a.memoryMb,
    diskMb: a.diskMb ?? 0,
    gpuCount: a.gpus,
    gpuModel: a.gpuModel ?? null,
    gpuMinMemoryMb: a.gpuMinMemoryMb ?? null,
    minCuda: parseCuda(a.minCudaVersion),
    labels: a.labels && Object.keys(a.labels).length ? a.labels : null,
    region: a.region ?? null,
    nodeId: a.nodeId ?? null,
    providerId: a.providerId ?? null,
    maxPriceMicros: a.maxPriceMicros ?? null,
    registry: a.registry,
    network: a.network,
  };
}

const priceOf = (j: JobRequest): SQL => sql`round(${priceMilliSql(j)} / 1000.0)`;

/** The rules the job asks, in the order the dry run reports them. */
const asked = <R extends { name: ConstraintName; asks(j: JobRequest): boolean; sql(j: JobRequest): SQL }>(rules: readonly R[], j: JobRequest) =>
  rules.filter((r) => r.asks(j)).map((r) => ({ name: r.name, ok: r.sql(j) }));

interface OfferRow {
  id: string;
  region: string | null;
  labels: unknown;
  model: string | null;
  is_mig: boolean | null;
  memory_mb: unknown;
  free: unknown;
  total: unknown;
  cuda: string | null;
  driver: string | null;
  cpu_free_millis: unknown;
  memory_free_mb: unknown;
  price_gpu: unknown;
  price_cpu: unknown;
  price: unknown;
  jobs_succeeded: unknown;
  jobs_failed: unknown;
  lease_expiries: unknown;
  last_heartbeat_at: unknown;
  registries: unknown;
  networks: unknown;
}

const json = (v: unknown) => (typeof v === 'string' ? JSON.parse(v) : v);
const iso = (v: unknown) => (v === null || v === undefined ? null : (v instanceof Date ? v : new Date(String(v))).toISOString());

function toOffer(r: OfferRow): Offer {
  return {
    nodeId: r.id,
    region: r.region,
    labels: (json(r.labels) ?? {}) as Record<string, string>,
    gpu:
      r.model === null
        ? null
        : {
            model: r.model,
            kind: r.is_mig ? 'mig' : 'gpu',
            memoryMb: n(r.memory_mb),
            free: n(r.free),
            total: n(r.total),
            cudaVersion: r.cuda,
            driverVersion: r.driver,
          },
    cpuFree: n(r.cpu_free_millis) / 1000,
    memoryFreeMb: n(r.memory_free_mb),
    pricePerGpuHour: fromMicros(n(r.price_gpu)),
    pricePerCpuHour: fromMicros(n(r.price_cpu)),
    pricePerHour: fromMicros(n(r.price)),
    record: { jobsSucceeded: n(r.jobs_succeeded), jobsFailed: n(r.jobs_failed), leaseExpiries: n(r.lease_expiries) },
    lastHeartbeatAt: iso(r.last_heartbeat_at),
    registries: (json(r.registries) ?? null) as string[] | null,
    networks: (json(r.networks) ?? null) as string[] | null,
  };
}

/**
 * Free capacity that fits the ask, one offer per node and GPU model (whole GPUs and MIG
 * devices apart), in the scheduler's order: cheapest, then tightest fit (fewest GPUs, then least
 * memory, then least CPU left over), then least recently placed on.
 */
export async function findOffers(database: Database, a: Ask, limit: number): Promise<Offer[]> {
  const j = requestOf(a);
  const tests = sql.join(
    [...asked(nodeRules, j), ...asked(capacityRules, j)].map((t) => t.ok),
    sql` and `,
  );
  const nodeCols = sql`n.id, n.region, n.labels, n.cpu_millis - n.allocated_cpu_millis as cpu_free_millis,
    n.memory_mb - n.allocated_memory_mb as memory_free_mb, n.price_gpu_hour_micros as price_gpu,
    n.price_cpu_hour_micros as price_cpu, ${priceOf(j)} as price, n.jobs_succeeded, n.jobs_failed, n.lease_expiries,
    n.last_heartbeat_at, n.runtime->'registries' as registries, n.runtime->'networks' as networks`;
  const live = takesWork.sql('n');
  const match = gpuMatchSql(j);
  if (a.gpus === 0) {
    const rows = await database.rows<OfferRow>(sql`
      select ${nodeCols}, null as model, null as is_mig, null as memory_mb, null as free, null as total, null as cuda, null as driver
      from nodes n where ${live} and ${tests}
      order by ${priceMilliSql(j)}, (select count(*) from gpus g where g.node_id = n.id and g.job_id is null),
        n.memory_mb - n.allocated_memory_mb, n.cpu_millis - n.allocated_cpu_millis, n.last_placed_at nulls first, n.id
      limit ${limit}`);
    return rows.map(toOffer);
  }
  const rows = await database.rows<OfferRow>(sql`
    with groups as (
      select g.node_id, g.model, g.mig is not null as is_mig,
        count(*) filter (where ${match} and g.job_id is null) as free,
        count(*) filter (where ${match}) as total,
        min(g.memory_mb) filter (where ${match}) as memory_mb,
        max(g.cuda_version) filter (where ${match}) as cuda,
        max(g.driver_version) filter (where ${match}) as driver,
        sum(count(*) filter (where g.job_id is null)) over (partition by g.node_id) as node_free
      from gpus g
      group by g.node_id, g.model, g.mig is not null
    )
    select ${nodeCols}, f.model, f.is_mig, f.memory_mb, f.free, f.total, f.cuda, f.driver
    from groups f join nodes n on n.id = f.node_id
    where ${live} and f.free >= ${a.gpus} and ${tests}
    order by ${priceMilliSql(j)}, f.node_free - ${a.gpus}, n.memory_mb - n.allocated_memory_mb, n.cpu_millis - n.allocated_cpu_millis,
      n.last_placed_at nulls first, n.id, f.model collate "C", f.is_mig
    limit ${limit}`);
  return rows.map(toOffer);
}

export async function listOffers(database: Database, q: OffersQuery): Promise<{ shape: Shape; items: Offer[] }> {
  const a = askFromQuery(q);
  return { shape: shapeOf(a), items: await findOffers(database, a, q.limit) };
}

const plural = (k: number, one: string, many = `${one}s`) => `${k} ${k === 1 ? one : many}`;

function detailOf(c: ConstraintName, a: Ask, nodes: number, cheapestMicros: number | null): string {
  const those = plural(nodes, 'node');
  const model = a.gpuModel ? `${a.gpuModel} ` : '';
  switch (c) {
    case 'offline':
      return `${those} offline`;
    case 'draining':
      return `${those} draining (taking no new work)`;
    case 'no_runtime':
      return `${those} whose agent has no runtime to run jobs with (no Docker)`;
    case 'node':
      return `${those} not the node the job names (${a.nodeId})`;
    case 'provider':
      return `${those} of another provider than the job names`;
    case 'region':
      return `${those} outside region ${a.region}`;
    case 'labels':
      return `${those} without the labels ${Object.entries(a.labels ?? {}).map(([k, v]) => `${k}=${v}`).join(', ')}`;
    case 'registry':
      return `${those} whose provider does not allow images from ${a.registry}`;
    case 'network':
      return `${those} that take only network: none jobs (their agent cannot isolate a job's bridge network)`;
    case 'gpu_model':
      return `${those} with no ${model}GPU`;
    case 'gpu_memory':
      return `${those} with no ${model}GPU of ${a.gpuMinMemoryMb} MB or more`;
    case 'cuda':
      return `${those} whose ${model}GPUs have CUDA below ${a.minCudaVersion}`;
    case 'gpu_count':
      return `${those} with fewer than ${a.gpus} matching GPUs in all`;
    case 'gpus_busy':
      return `${those} whose matching GPUs are busy (fewer than ${a.gpus} free now)`;
    case 'cpu':
      return `${those} with fewer than ${a.cpuMillis / 1000} CPU cores free`;
    case 'memory':
      return `${those} with less than ${a.memoryMb} MB of memory free`;
    case 'disk':
      return `${those} with less than ${a.diskMb} MB of disk free`;
    case 'price':
      return `${those} over the maximum of ${fromMicros(a.maxPriceMicros ?? 0)} per hour${cheapestMicros === null ? '' : ` (the cheapest asks ${fromMicros(cheapestMicros)})`}`;
  }
}

/**
 * What submitting the spec now would do: the offers it would take first and, for every node
 * that cannot take it, the first constraint that rules it out, counted by constraint.
 */
export async function dryRun(database: Database, spec: JobSpec, credit?: { accountId: string; leaseTtlSeconds: number }): Promise<DryRun> {
  const a = askFromSpec(spec);
  const j = requestOf(a);
  const offers = await findOffers(database, a, 5);
  const gpuCase =
    a.gpus > 0
      ? sql`
        when coalesce(g.m, 0) = 0 then 'gpu_model'
        when coalesce(g.mm, 0) = 0 then 'gpu_memory'
        when coalesce(g.mmc, 0) = 0 then 'cuda'
        when g.mmc < ${a.gpus} then 'gpu_count'
        when g.free < ${a.gpus} then 'gpus_busy'`
      : sql``;
  const whens = (tests: { name: ConstraintName; ok: SQL }[]) =>
    sql.join(
      // The names are a closed list: literals, so the CASE has one type.
      tests.map((t) => sql`when not (${t.ok}) then ${sql.raw(`'${t.name}'`)}`),
      sql` `,
    );
  const rows = await database.rows<{ verdict: string; nodes: unknown; cheapest: unknown }>(sql`
    with g as (
      select node_id,
        count(*) filter (where ${gpuMatchSql(j, 'gpu_model')}) as m,
        count(*) filter (where ${gpuMatchSql(j, 'gpu_memory')}) as mm,
        count(*) filter (where ${gpuMatchSql(j)}) as mmc,
        count(*) filter (where ${gpuMatchSql(j)} and g.job_id is null) as free
      from gpus g group by node_id
    ), v as (
      select ${priceMilliSql(j)} as price, case
        ${takesWork.whyNotSql()}
        ${whens(asked(nodeRules, j))}
        ${gpuCase}
        ${whens(asked(capacityRules, j))}
        else 'fits' end as verdict
      from nodes n left join g on g.node_id = n.id
      where n.status in ('online', 'offline')
    )
    select verdict, count(*) as nodes, min(price) as cheapest from v group by verdict`);
  let feasible = 0;
  const ruledOut: RuledOut[] = [];
  const order = new Map<string, number>(
    ['offline', 'draining', 'no_runtime', 'node', 'provider', 'region', 'labels', 'registry', 'network', 'gpu_model', 'gpu_memory', 'cuda', 'gpu_count', 'gpus_busy', 'cpu', 'memory', 'disk', 'price'].map(
      (c, i) => [c, i],
    ),
  );
  for (const r of rows) {
    if (r.verdict === 'fits') {
      feasible = n(r.nodes);
      continue;
    }
    const constraint = r.verdict as ConstraintName;
    const cheapest = r.cheapest === null || r.cheapest === undefined ? null : Math.round(n(r.cheapest) / 1000);
    ruledOut.push({ constraint, nodes: n(r.nodes), detail: detailOf(constraint, a, n(r.nodes), cheapest) });
  }
  ruledOut.sort((x, y) => order.get(x.constraint)! - order.get(y.constraint)!);
  const first = offers[0];
  return {
    credit: first && credit ? await creditCheck(database, spec, first, credit) : null,
    fits: offers.length > 0,
    shape: shapeOf(a),
    maxPricePerHour: spec.maxPricePerHour ?? null,
    offers,
    estimatedCostPerHour: first ? first.pricePerHour : null,
    feasibleNodes: feasible,
    ruledOut,
  };
}

/** The scheduler's credit rule (rules.ts) in its SQL form, for the hold a lease on this offer would take. */
async function creditCheck(database: Database, spec: JobSpec, offer: Offer, c: { accountId: string; leaseTtlSeconds: number }) {
  const gpus = offer.gpu ? spec.resources.gpus : 0;
  const cpuMillis = Math.round(spec.resources.cpu * 1000);
  const pg = toMicros(offer.pricePerGpuHour);
  const pc = toMicros(offer.pricePerCpuHour);
  const seconds = Math.min(c.leaseTtlSeconds, spec.timeoutSeconds);
  const needed = leaseCostMicros(gpus, cpuMillis, pg, pc, seconds * 1000);
  if (needed <= 0) return null;
  const [row] = await database.rows<{ fits: boolean; available: unknown }>(sql`
    select ${creditRule.sql(needed, 'la')} as fits, la.credits_posted + la.credit_limit - la.debits_posted - la.debits_pending as available
    from (select 1) one left join ledger_accounts la on la.id = ${ledgerId.client(c.accountId)}`);
  const available = row?.available === null || row?.available === undefined ? 0 : n(row.available);
  const fits = row?.available === null || row?.available === undefined ? false : Boolean(row.fits);
  return {
    needed: fromMicros(needed),
    available: fromMicros(available),
    fits,
    detail: fits ? `holds ${formatAmount(needed)} of ${formatAmount(available)} available` : creditRule.describe(needed, seconds, priceMilliMicros(gpus, cpuMillis, pg, pc), available),
  };
}
