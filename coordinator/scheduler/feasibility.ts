import { formatPrice } from '../../shared/money.ts';

// Does a job fit a node now, and if not, why: the rules of rules.ts applied over in-memory
// views, so that a pass over thousands of nodes never asks the database per job or per node.

import {
  capacityRules,
  gpuRules,
  nodeRules,
  priceMilliMicros,
  type CapacityRuleName,
  type GpuView,
  type JobRequest,
  type ModelMatcher,
  type NodeRuleName,
  type NodeView,
} from './rules.ts';

// The rules themselves live in rules.ts, each with its SQL form beside it; these apply them.
export { ModelMatcher, modelMatches, parseCuda, priceMilliMicros, withinPrice } from './rules.ts';
export type { GpuView, JobRequest, NodeView } from './rules.ts';

/** Why a node does not fit, in the order the rules are checked. */
export type Rejection = NodeRuleName | 'gpus' | CapacityRuleName;

export type Decision =
  | { fits: true; gpus: GpuView[]; priceMilliMicros: number }
  | { fits: false; reason: Rejection };

const [modelRule, gpuMemoryRule, cudaRule] = gpuRules as [GpuRule, GpuRule, GpuRule];
type GpuRule = (typeof gpuRules)[number];

export const formatCuda = (v: number) => `${Math.floor(v / 1000)}.${v % 1000}`;

/**
 * The GPUs of `node` the job could take: free, of its model, with its memory and CUDA version,
 * and all of one product name and kind (whole GPUs or MIG devices), as offers list them one per
 * node and model: of the groups with enough, the first by name (whole GPUs before MIG devices).
 * Fewer than the job asks when no group has enough.
 */
export function matchingGpus(job: JobRequest, node: NodeView, models: ModelMatcher): GpuView[] {
  const asked = gpuRules.filter((r) => r.asks(job));
  const ok = node.freeGpus.filter((g) => asked.every((r) => r.js(job, g, models)));
  if (ok.every((g) => sameGroup(g, ok[0]!))) return ok;
  let best: GpuView[] = [];
  for (const group of groupsOf(ok)) {
    if (group.length < job.gpuCount) continue;
    if (!best.length || groupBefore(group[0]!, best[0]!)) best = group;
  }
  return best;
}

const sameGroup = (a: GpuView, b: GpuView) => a.model === b.model && !!a.mig === !!b.mig;
/** The order of offers: by product name (code points, as the SQL's collate "C"), whole GPUs first. */
const groupBefore = (a: GpuView, b: GpuView) => (a.model !== b.model ? a.model < b.model : !a.mig && !!b.mig);

function groupsOf(gpus: GpuView[]): GpuView[][] {
  const groups = new Map<string, GpuView[]>();
  for (const g of gpus) {
    const key = `${g.mig ? 1 : 0}${g.model}`;
    let list = groups.get(key);
    if (!list) groups.set(key, (list = []));
    list.push(g);
  }
  return [...groups.values()];
}

/** How many GPUs of one group the job could take at most (matchingGpus without building lists, for one-model nodes). */
export function countMatchingGpus(job: JobRequest, node: NodeView, models: ModelMatcher): number {
  const first = node.freeGpus[0];
  if (!first || !node.freeGpus.every((g) => sameGroup(g, first))) {
    // Several models or kinds on the node: the largest group that matches.
    const ok = node.freeGpus.filter((g) => gpuRules.every((r) => !r.asks(job) || r.js(job, g, models)));
    return Math.max(0, ...groupsOf(ok).map((g) => g.length));
  }
  const model = modelRule.asks(job);
  const memory = gpuMemoryRule.asks(job);
  const cuda = cudaRule.asks(job);
  if (!model && !memory && !cuda) return node.freeGpus.length;
  if (model && !modelRule.js(job, first, models)) return 0;
  let n = 0;
  for (const g of node.freeGpus) {
    if (memory && !gpuMemoryRule.js(job, g, models)) continue;
    if (cuda && !cudaRule.js(job, g, models)) continue;
    n++;
  }
  return n;
}

/** The rules that do not depend on what is free: the node, provider, region and labels asked for. */
export function fitsConstraints(job: JobRequest, node: NodeView): boolean {
  for (const r of nodeRules) if (r.asks(job) && !r.js(job, node)) return false;
  return true;
}

/** Whether the job fits the node now, and which GPUs it would get; or the first rule it breaks. */
export function decide(job: JobRequest, node: NodeView, models: ModelMatcher): Decision {
  for (const r of nodeRules) if (r.asks(job) && !r.js(job, node)) return { fits: false, reason: r.name };
  let gpus: GpuView[] = [];
  if (job.gpuCount > 0) {
    if (node.freeGpus.length < job.gpuCount) return { fits: false, reason: 'gpus' };
    const matching = matchingGpus(job, node, models);
    if (matching.length < job.gpuCount) return { fits: false, reason: 'gpus' };
    gpus = matching.slice(0, job.gpuCount);
  }
  for (const r of capacityRules) if (r.asks(job) && !r.js(job, node)) return { fits: false, reason: r.name };
  return { fits: true, gpus, priceMilliMicros: priceMilliMicros(job.gpuCount, job.cpuMillis, node.priceGpuHourMicros, node.priceCpuHourMicros) };
}

/** How many nodes broke each rule first, for a job that fit none. */
export type RejectionCounts = Partial<Record<Rejection, number>>;

const plural = (n: number, one: string, many = `${one}s`) => `${n} ${n === 1 ? one : many}`;
const cores = (millis: number) => (millis % 1000 === 0 ? String(millis / 1000) : (millis / 1000).toFixed(3).replace(/0+$/, ''));

/**
 * The plain-words reason a job waits, as GET /v1/jobs/:id shows it: "no online node has 2 free
 * GPUs of model H100 within 3.00/hour; 4 would fit without the price limit".
 */
export function describePending(job: JobRequest, counts: RejectionCounts, onlineNodes: number): string {
  if (onlineNodes === 0) return 'no node is online and taking work';
  let what: string;
  if (job.gpuCount > 0) {
    what = `${plural(job.gpuCount, 'free GPU')}`;
    if (job.gpuModel !== null) what += ` of model ${job.gpuModel}`;
    const each: string[] = [];
    if (job.gpuMinMemoryMb !== null) each.push(`${job.gpuMinMemoryMb} MB`);
    if (job.minCuda !== null) each.push(`CUDA ${formatCuda(job.minCuda)}`);
    if (each.length) what += ` with at least ${each.join(' and ')}${job.gpuCount > 1 ? ' each' : ''}`;
    // CPU and memory are named only where they are what is missing.
    if ((counts.cpu ?? 0) + (counts.memory ?? 0) > 0) what += `, ${cores(job.cpuMillis)} CPUs and ${job.memoryMb} MB of memory free`;
  } else {
    what = `${cores(job.cpuMillis)} free CPU${job.cpuMillis === 1000 ? '' : 's'} and ${job.memoryMb} MB of free memory`;
  }
  const where: string[] = [];
  if (job.labels !== null && Object.keys(job.labels).length) {
    where.push(`with labels ${Object.entries(job.labels).map(([k, v]) => `${k}=${v}`).join(', ')}`);
  }
  if (job.region !== null) where.push(`in region ${job.region}`);
  if ((counts.registry ?? 0) > 0 && job.registry) where.push(`that pulls images from ${job.registry}`);
  if ((counts.network ?? 0) > 0 && job.network === 'bridge') where.push('that isolates bridge networking');
  const who = job.nodeId !== null ? `node ${job.nodeId}` : job.providerId !== null ? `node of provider ${job.providerId}` : 'node';
  let text = `no online ${who}${where.length ? ` ${where.join(' ')}` : ''} has ${what}`;
  if (job.maxPriceMicros !== null) text += ` within ${formatPrice(job.maxPriceMicros)}/hour`;
  if ((counts.disk ?? 0) > 0) text += `; ${plural(counts.disk!, 'node')} would fit but for ${job.diskMb} MB of free disk`;
  const priceOnly = counts.price ?? 0;
  if (priceOnly > 0) text += `; ${priceOnly} would fit without the price limit`;
  return text;
}
