import { formatPrice } from '../../shared/money.ts';

// The matching rules: does a job fit a node now, and if not, why. Pure functions over in-memory
// views, so that a pass over thousands of nodes never asks the database per job or per node.

/** A free GPU of a node, as the scheduler sees it in one pass. */
export interface GpuView {
  id: string;
  index: number;
  model: string;
  memoryMb: number;
  /** The CUDA version the driver supports, as major * 1000 + minor; null when unknown. */
  cuda: number | null;
}

/** An online node that takes work, with what is free on it in this pass. */
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
  /** The registries its agent pulls images from; null or absent when its agent does not say. */
  registries?: string[] | null;
  /** The job networks it takes (`bridge` only where they are isolated); null or absent when not said. */
  networks?: string[] | null;
}

/** What a queued job asks for, from its columns and spec. */
export interface JobRequest {
  id: string;
  cpuMillis: number;
  memoryMb: number;
  diskMb: number;
  gpuCount: number;
  gpuModel: string | null;
  gpuMinMemoryMb: number | null;
  minCuda: number | null;
  labels: Record<string, string> | null;
  region: string | null;
  nodeId: string | null;
  providerId: string | null;
  maxPriceMicros: number | null;
  /** The registry of its image (shared/images.ts imageRegistry). */
  registry?: string;
  network?: string;
}

/** Why a node does not fit, in the order the rules are checked. */
export type Rejection = 'node' | 'provider' | 'region' | 'labels' | 'registry' | 'network' | 'gpus' | 'cpu' | 'memory' | 'disk' | 'price';

export type Decision =
  | { fits: true; gpus: GpuView[]; priceMilliMicros: number }
  | { fits: false; reason: Rejection };

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

export const formatCuda = (v: number) => `${Math.floor(v / 1000)}.${v % 1000}`;

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

export function withinPrice(job: JobRequest, priceMilli: number): boolean {
  return job.maxPriceMicros === null || priceMilli <= job.maxPriceMicros * 1000;
}

/** The GPUs of `node` the job could take: free, of its model, with its memory and CUDA version. */
export function matchingGpus(job: JobRequest, node: NodeView, models: ModelMatcher): GpuView[] {
  const out: GpuView[] = [];
  for (const g of node.freeGpus) {
    if (job.gpuModel !== null && !models.matches(job.gpuModel, g.model)) continue;
    if (job.gpuMinMemoryMb !== null && g.memoryMb < job.gpuMinMemoryMb) continue;
    if (job.minCuda !== null && (g.cuda === null || g.cuda < job.minCuda)) continue;
    out.push(g);
  }
  return out;
}

/** How many of the node's free GPUs the job could take (matchingGpus without building the list). */
export function countMatchingGpus(job: JobRequest, node: NodeView, models: ModelMatcher): number {
  if (job.gpuModel === null && job.gpuMinMemoryMb === null && job.minCuda === null) return node.freeGpus.length;
  let n = 0;
  let lastModel = '';
  let lastOk = false;
  for (const g of node.freeGpus) {
    if (job.gpuModel !== null) {
      // A node's GPUs are mostly one model: ask the matcher once per run of equal names.
      if (g.model !== lastModel) {
        lastModel = g.model;
        lastOk = models.matches(job.gpuModel, g.model);
      }
      if (!lastOk) continue;
    }
    if (job.gpuMinMemoryMb !== null && g.memoryMb < job.gpuMinMemoryMb) continue;
    if (job.minCuda !== null && (g.cuda === null || g.cuda < job.minCuda)) continue;
    n++;
  }
  return n;
}

/** The rules that do not depend on what is free: the node, provider, region and labels asked for. */
export function fitsConstraints(job: JobRequest, node: NodeView): boolean {
  if (job.nodeId !== null && node.id !== job.nodeId) return false;
  if (job.providerId !== null && node.accountId !== job.providerId) return false;
  if (job.region !== null && node.region !== job.region) return false;
  if (job.labels !== null && !labelsMatch(job.labels, node.labels)) return false;
  if (!registryAllowed(job, node)) return false;
  if (!networkTaken(job, node)) return false;
  return true;
}

/** The node's agent pulls from the job's registry (an agent that does not say is not ruled out). */
export const registryAllowed = (job: JobRequest, node: NodeView) => !job.registry || !node.registries || node.registries.includes(job.registry);
/** The node takes the job's network: `bridge` only where its agent isolates it. */
export const networkTaken = (job: JobRequest, node: NodeView) => !job.network || !node.networks || node.networks.includes(job.network);

function labelsMatch(want: Record<string, string>, have: Record<string, string>): boolean {
  for (const k in want) if (have[k] !== want[k]) return false;
  return true;
}

/** Whether the job fits the node now, and which GPUs it would get; or the first rule it breaks. */
export function decide(job: JobRequest, node: NodeView, models: ModelMatcher): Decision {
  if (job.nodeId !== null && node.id !== job.nodeId) return { fits: false, reason: 'node' };
  if (job.providerId !== null && node.accountId !== job.providerId) return { fits: false, reason: 'provider' };
  if (job.region !== null && node.region !== job.region) return { fits: false, reason: 'region' };
  if (job.labels !== null && !labelsMatch(job.labels, node.labels)) return { fits: false, reason: 'labels' };
  if (!registryAllowed(job, node)) return { fits: false, reason: 'registry' };
  if (!networkTaken(job, node)) return { fits: false, reason: 'network' };
  let gpus: GpuView[] = [];
  if (job.gpuCount > 0) {
    if (node.freeGpus.length < job.gpuCount) return { fits: false, reason: 'gpus' };
    const matching = matchingGpus(job, node, models);
    if (matching.length < job.gpuCount) return { fits: false, reason: 'gpus' };
    gpus = matching.slice(0, job.gpuCount);
  }
  if (node.freeCpuMillis < job.cpuMillis) return { fits: false, reason: 'cpu' };
  if (node.freeMemoryMb < job.memoryMb) return { fits: false, reason: 'memory' };
  if (node.freeDiskMb < job.diskMb) return { fits: false, reason: 'disk' };
  const price = priceMilliMicros(job.gpuCount, job.cpuMillis, node.priceGpuHourMicros, node.priceCpuHourMicros);
  if (!withinPrice(job, price)) return { fits: false, reason: 'price' };
  return { fits: true, gpus, priceMilliMicros: price };
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
