import type { ApiClient } from '../../shared/client.ts';
import type { JobSpec } from '../../shared/jobs.ts';
import { type Command, type Context, flagValue, str } from '../command.ts';
import { type Column, table } from '../output.ts';
import { formatDuration, formatSizeMb, parseDecimal, parseSizeMb, parseWholeNumber } from '../units.ts';

// TODO(issue 7 part 1-2): import Pool, Offer and DryRun from shared/pool.ts once the pool
// engineer lands it; these are the shapes the issue describes.
interface PoolModel {
  model: string;
  online?: number;
  free?: number;
  busy?: number;
  offline?: number;
  memoryMb?: number;
  price?: { min?: number | null; median?: number | null; max?: number | null };
}
interface Pool {
  models?: PoolModel[];
  totals?: { cpuCores?: number; memoryMb?: number; nodes?: number };
  queue?: { model?: string | null; depth?: number; oldestWaitSeconds?: number | null }[];
  lastHour?: { started?: number; succeeded?: number; failed?: number };
}
export interface Offer {
  nodeId?: string;
  gpuModel?: string | null;
  gpusFree?: number;
  gpuMemoryMb?: number | null;
  cpuFree?: number;
  memoryFreeMb?: number;
  pricePerHour?: number;
  region?: string | null;
  record?: { jobsSucceeded?: number; jobsFailed?: number; leaseExpiries?: number };
}
interface DryRun {
  offers?: Offer[];
  estimatedPricePerHour?: number | null;
  ruledOut?: { reason: string; nodes?: number }[];
}

const money = (n: number | null | undefined) => (n === null || n === undefined ? '-' : n.toFixed(2));
const width = (ctx: Context) => (ctx.stdoutIsTerminal ? ctx.stdout.columns : undefined);

export const pool: Command = {
  name: 'pool',
  summary: 'What the pool holds right now: GPUs by model (online, free, busy), prices, queue.',
  usage: ['pool [--json]'],
  description: 'Needs no API key: the pool figures are public aggregates.',
  flags: { json: { type: 'boolean', help: 'print the answer as JSON' } },
  positionals: { min: 0, max: 0 },
  async run(ctx, { values }) {
    const { api } = await ctx.connect({ needKey: false });
    const p = await api.get<Pool>('/v1/pool');
    if (values.json) {
      ctx.stdout.write(`${JSON.stringify(p, null, 2)}\n`);
      return;
    }
    const cols: Column<PoolModel>[] = [
      { header: 'GPU MODEL', value: (m) => m.model, flex: true },
      { header: 'MEMORY', value: (m) => (m.memoryMb ? formatSizeMb(m.memoryMb) : '-'), right: true },
      { header: 'ONLINE', value: (m) => String(m.online ?? 0), right: true },
      { header: 'FREE', value: (m) => String(m.free ?? 0), right: true, paint: (t) => (t.trim() !== '0' ? ctx.out.paint('green', t) : t) },
      { header: 'BUSY', value: (m) => String(m.busy ?? 0), right: true },
      { header: 'OFFLINE', value: (m) => String(m.offline ?? 0), right: true },
      { header: 'MIN/H', value: (m) => money(m.price?.min), right: true },
      { header: 'MEDIAN/H', value: (m) => money(m.price?.median), right: true },
      { header: 'MAX/H', value: (m) => money(m.price?.max), right: true },
    ];
    const models = p.models ?? [];
    ctx.stdout.write(models.length ? table(cols, models, { painter: ctx.out, width: width(ctx) }) : 'No GPUs in the pool yet.\n');
    const t = p.totals;
    if (t) ctx.stdout.write(`\n${t.nodes !== undefined ? `${t.nodes} nodes, ` : ''}${t.cpuCores ?? 0} CPU cores, ${formatSizeMb(t.memoryMb ?? 0)} memory\n`);
    const queue = (p.queue ?? []).filter((q) => (q.depth ?? 0) > 0);
    if (queue.length) {
      ctx.stdout.write('\nqueued:\n');
      const qc: Column<(typeof queue)[number]>[] = [
        { header: 'MODEL', value: (q) => q.model ?? 'any / no GPU' },
        { header: 'JOBS', value: (q) => String(q.depth ?? 0), right: true },
        { header: 'OLDEST WAITING', value: (q) => (q.oldestWaitSeconds != null ? formatDuration(q.oldestWaitSeconds) : '-'), right: true },
      ];
      ctx.stdout.write(table(qc, queue, { painter: ctx.out }));
    }
    const h = p.lastHour;
    if (h) ctx.stdout.write(`\nlast hour: ${h.started ?? 0} started, ${h.succeeded ?? 0} succeeded, ${h.failed ?? 0} failed\n`);
  },
};

export const offerColumns = (ctx: Context): Column<Offer>[] => [
  { header: 'NODE', value: (o) => o.nodeId ?? '-' },
  { header: 'GPU MODEL', value: (o) => o.gpuModel ?? '-', flex: true },
  { header: 'FREE', value: (o) => String(o.gpusFree ?? 0), right: true },
  { header: 'GPU MEM', value: (o) => (o.gpuMemoryMb ? formatSizeMb(o.gpuMemoryMb) : '-'), right: true },
  { header: 'CPU', value: (o) => String(o.cpuFree ?? '-'), right: true },
  { header: 'MEMORY', value: (o) => (o.memoryFreeMb !== undefined ? formatSizeMb(o.memoryFreeMb) : '-'), right: true },
  { header: 'PRICE/H', value: (o) => money(o.pricePerHour), right: true, paint: (t) => ctx.out.paint('bold', t) },
  { header: 'REGION', value: (o) => o.region ?? '-' },
  {
    header: 'RECORD',
    value: (o) => (o.record ? `${o.record.jobsSucceeded ?? 0} ok, ${o.record.jobsFailed ?? 0} failed, ${o.record.leaseExpiries ?? 0} lost` : '-'),
  },
];

export const offers: Command = {
  name: 'offers',
  summary: 'Free capacity you can lease now, per node, with the price for the shape you ask.',
  usage: ['offers [--gpu MODEL] [--gpus N] [--gpu-memory SIZE] [--max-price P] [--region R]'],
  flags: {
    gpu: { type: 'string', arg: 'MODEL', help: 'GPU model, e.g. H100 or "RTX 4090"' },
    gpus: { type: 'string', arg: 'N', help: 'how many GPUs on one node (default 1 with --gpu)' },
    'gpu-memory': { type: 'string', arg: 'SIZE', help: 'at least this much memory per GPU, e.g. 80G' },
    'max-price': { type: 'string', arg: 'PRICE', help: 'at most this per hour for the shape' },
    region: { type: 'string', arg: 'REGION', help: 'only this region' },
    json: { type: 'boolean', help: 'print the answer as JSON' },
  },
  positionals: { min: 0, max: 0 },
  examples: ['gantry offers --gpu H100 --gpus 2'],
  async run(ctx, { values }) {
    const q = new URLSearchParams();
    const gpu = str(values, 'gpu');
    if (gpu) q.set('gpuModel', gpu);
    const gpus = flagValue('offers', 'gpus', str(values, 'gpus'), (t) => parseWholeNumber(t, 0, 64));
    if (gpus !== undefined) q.set('gpus', String(gpus));
    const mem = flagValue('offers', 'gpu-memory', str(values, 'gpu-memory'), parseSizeMb);
    if (mem !== undefined) q.set('minGpuMemoryMb', String(mem));
    const price = flagValue('offers', 'max-price', str(values, 'max-price'), parseDecimal);
    if (price !== undefined) q.set('maxPricePerHour', String(price));
    const region = str(values, 'region');
    if (region) q.set('region', region);
    const { api } = await ctx.connect({ needKey: false });
    const answer = await api.get<{ items?: Offer[]; offers?: Offer[] }>(`/v1/offers${q.size ? `?${q}` : ''}`);
    const items = answer.items ?? answer.offers ?? [];
    if (values.json) {
      ctx.stdout.write(`${JSON.stringify(items, null, 2)}\n`);
      return;
    }
    if (!items.length) {
      ctx.stdout.write('No offers match right now.\n');
      return;
    }
    ctx.stdout.write(table(offerColumns(ctx), items, { painter: ctx.out, width: width(ctx) }));
  },
};

/** `gantry submit --dry-run`: the offers the job would take, first choice first, or why none fits. */
export async function showDryRun(ctx: Context, api: ApiClient, spec: JobSpec, json: boolean): Promise<number> {
  // TODO(issue 7 part 2): the route's path and shape follow shared/pool.ts when it lands.
  const answer = await api.post<DryRun>('/v1/jobs/dry-run', spec);
  const found = answer.offers ?? [];
  if (json) {
    ctx.stdout.write(`${JSON.stringify(answer, null, 2)}\n`);
    return found.length ? 0 : 1;
  }
  if (found.length) {
    ctx.stdout.write(`${spec.name} would run on (first choice first):\n`);
    ctx.stdout.write(table(offerColumns(ctx), found, { painter: ctx.out, width: width(ctx) }));
    const per = answer.estimatedPricePerHour ?? found[0]?.pricePerHour;
    if (per !== undefined && per !== null) {
      const most = (per * spec.timeoutSeconds) / 3600;
      ctx.stdout.write(`\nestimated cost: ${money(per)}/hour (at most ${money(most)} for the ${formatDuration(spec.timeoutSeconds)} timeout)\n`);
    }
    return 0;
  }
  ctx.stdout.write(`No node fits ${spec.name} right now.\n`);
  for (const r of answer.ruledOut ?? []) ctx.stdout.write(`  ${r.nodes !== undefined ? `${r.nodes} node${r.nodes === 1 ? '' : 's'}: ` : ''}${r.reason}\n`);
  return 1;
}
