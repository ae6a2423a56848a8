import type { ApiClient } from '../../shared/client.ts';
import type { JobSpec } from '../../shared/jobs.ts';
import { DryRun, Offers, Pool, type Offer, type PoolGpuModel, type PoolQueueModel } from '../../shared/pool.ts';
import { type Command, type Context, flagValue, str } from '../command.ts';
import { type Column, printable, table } from '../output.ts';
import { formatDuration, formatSizeMb, parseDecimal, parseSizeMb, parseWholeNumber } from '../units.ts';

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
    const p = await api.get('/v1/pool', Pool);
    if (values.json) {
      ctx.stdout.write(`${JSON.stringify(p, null, 2)}\n`);
      return;
    }
    const cols: Column<PoolGpuModel>[] = [
      { header: 'GPU MODEL', value: (m) => `${m.model}${m.kind === 'mig' ? ' (MIG)' : ''}`, flex: true },
      { header: 'MEMORY', value: (m) => (m.memoryMb ? formatSizeMb(m.memoryMb) : '-'), right: true },
      { header: 'ONLINE', value: (m) => String(m.online), right: true },
      { header: 'FREE', value: (m) => String(m.free), right: true, paint: (t) => (t.trim() !== '0' ? ctx.out.paint('green', t) : t) },
      { header: 'BUSY', value: (m) => String(m.busy), right: true },
      { header: 'DRAINING', value: (m) => String(m.draining), right: true },
      { header: 'OFFLINE', value: (m) => String(m.offline), right: true },
      { header: 'UTIL', value: (m) => (m.avgUtilizationPct === null ? '-' : `${Math.round(m.avgUtilizationPct)}%`), right: true },
      { header: 'MIN/GPU-H', value: (m) => money(m.pricePerGpuHour?.min), right: true },
      { header: 'MEDIAN', value: (m) => money(m.pricePerGpuHour?.median), right: true },
      { header: 'MAX', value: (m) => money(m.pricePerGpuHour?.max), right: true },
    ];
    ctx.stdout.write(p.models.length ? table(cols, p.models, { painter: ctx.out, width: width(ctx) }) : 'No GPUs in the pool yet.\n');
    const nodes = `${p.nodes.online} node${p.nodes.online === 1 ? '' : 's'} online${p.nodes.draining ? ` (${p.nodes.draining} draining)` : ''}, ${p.nodes.offline} offline`;
    ctx.stdout.write(
      `\n${nodes}; GPUs ${p.gpus.free} free of ${p.gpus.online} online` +
        `${p.migDevices.online ? `, MIG devices ${p.migDevices.free} free of ${p.migDevices.online}` : ''}` +
        `; CPU ${fmtCores(p.cpu.free)} of ${fmtCores(p.cpu.cores)} cores free; memory ${formatSizeMb(p.memory.freeMb)} of ${formatSizeMb(p.memory.totalMb)} free\n`,
    );
    const q = p.queue;
    ctx.stdout.write(
      q.depth
        ? `queue: ${q.depth} job${q.depth === 1 ? '' : 's'} asking for ${q.gpusRequested} GPU${q.gpusRequested === 1 ? '' : 's'}, the oldest waiting ${formatDuration(q.oldestWaitSeconds ?? 0)}\n`
        : 'queue: empty\n',
    );
    if (q.byModel.length) {
      const now = Date.parse(p.at);
      const qc: Column<PoolQueueModel>[] = [
        { header: 'REQUESTED MODEL', value: (m) => m.model ?? 'any / none' },
        { header: 'JOBS', value: (m) => String(m.jobs), right: true },
        { header: 'GPUS', value: (m) => String(m.gpus), right: true },
        { header: 'OLDEST WAITING', value: (m) => formatDuration((now - Date.parse(m.oldestQueuedAt)) / 1000), right: true },
      ];
      ctx.stdout.write(table(qc, q.byModel, { painter: ctx.out }));
    }
    const h = p.lastHour;
    ctx.stdout.write(`last hour: ${h.started} started, ${h.succeeded} succeeded, ${h.failed} failed\n`);
  },
};

const fmtCores = (n: number) => String(Math.round(n * 10) / 10);

export const offerColumns = (ctx: Context): Column<Offer>[] => [
  { header: 'NODE', value: (o) => o.nodeId },
  { header: 'GPU MODEL', value: (o) => (o.gpu ? `${o.gpu.model}${o.gpu.kind === 'mig' ? ' (MIG)' : ''}` : '-'), flex: true },
  { header: 'FREE', value: (o) => (o.gpu ? `${o.gpu.free}/${o.gpu.total}` : '-'), right: true },
  { header: 'GPU MEM', value: (o) => (o.gpu ? formatSizeMb(o.gpu.memoryMb) : '-'), right: true },
  { header: 'CPU', value: (o) => fmtCores(o.cpuFree), right: true },
  { header: 'MEMORY', value: (o) => formatSizeMb(o.memoryFreeMb), right: true },
  { header: 'PRICE/H', value: (o) => money(o.pricePerHour), right: true, paint: (t) => ctx.out.paint('bold', t) },
  { header: 'REGION', value: (o) => o.region ?? '-' },
  { header: 'RECORD', value: (o) => `${o.record.jobsSucceeded} ok, ${o.record.jobsFailed} failed, ${o.record.leaseExpiries} lost` },
];

export const offers: Command = {
  name: 'offers',
  summary: 'Free capacity you can lease now, per node, with the price for the shape you ask.',
  usage: ['offers [--gpu MODEL] [--gpus N] [--gpu-memory SIZE] [--cpu N] [--memory SIZE] [--max-price P] [--region R]'],
  flags: {
    gpu: { type: 'string', arg: 'MODEL', help: 'GPU model, e.g. H100 or "RTX 4090"' },
    gpus: { type: 'string', arg: 'N', help: 'how many GPUs on one node (default 1; 0 for CPU-only offers)' },
    'gpu-memory': { type: 'string', arg: 'SIZE', help: 'at least this much memory per GPU, e.g. 80G' },
    'max-price': { type: 'string', arg: 'PRICE', help: 'at most this per hour for the shape' },
    region: { type: 'string', arg: 'REGION', help: 'only this region' },
    cpu: { type: 'string', arg: 'CORES', help: 'also this many free CPU cores' },
    memory: { type: 'string', arg: 'SIZE', help: 'also this much free memory, e.g. 64G' },
    json: { type: 'boolean', help: 'print the answer as JSON' },
  },
  positionals: { min: 0, max: 0 },
  examples: ['gantry offers --gpu H100 --gpus 2', 'gantry offers --gpus 0 --cpu 16 --memory 64G'],
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
    const cpu = flagValue('offers', 'cpu', str(values, 'cpu'), parseDecimal);
    if (cpu !== undefined) q.set('cpu', String(cpu));
    const memory = flagValue('offers', 'memory', str(values, 'memory'), parseSizeMb);
    if (memory !== undefined) q.set('memoryMb', String(memory));
    const { api } = await ctx.connect();
    const answer = await api.get(`/v1/offers${q.size ? `?${q}` : ''}`, Offers);
    if (values.json) {
      ctx.stdout.write(`${JSON.stringify(answer, null, 2)}\n`);
      return;
    }
    const { shape } = answer;
    const asked = `${shape.gpus} GPU${shape.gpus === 1 ? '' : 's'}${gpu ? ` of model ${gpu}` : ''}${shape.cpu ? `, ${fmtCores(shape.cpu)} CPU` : ''}${shape.memoryMb ? `, ${formatSizeMb(shape.memoryMb)}` : ''}`;
    if (!answer.items.length) {
      ctx.stdout.write(`No node has ${asked} free right now. gantry submit --dry-run JOB says what rules each node out.\n`);
      return;
    }
    ctx.stdout.write(`Free now for ${asked}, cheapest first (PRICE/H is for that shape):\n`);
    ctx.stdout.write(table(offerColumns(ctx), answer.items, { painter: ctx.out, width: width(ctx) }));
  },
};

/** `gantry submit --dry-run`: the offers the job would take, first choice first, or why none fits. */
export async function showDryRun(ctx: Context, api: ApiClient, spec: JobSpec, json: boolean): Promise<number> {
  const answer = await api.post('/v1/jobs/dry-run', spec, DryRun);
  if (json) {
    ctx.stdout.write(`${JSON.stringify(answer, null, 2)}\n`);
    return answer.fits ? 0 : 1;
  }
  const out = ctx.stdout;
  if (answer.fits) {
    out.write(`${spec.name} would go to ${answer.feasibleNodes === 1 ? 'the one node that fits' : `the first of ${answer.feasibleNodes} nodes that fit`}:\n`);
    out.write(table(offerColumns(ctx), answer.offers, { painter: ctx.out, width: width(ctx) }));
    if (answer.estimatedCostPerHour !== null) {
      const most = (answer.estimatedCostPerHour * spec.timeoutSeconds) / 3600;
      out.write(`\nestimated cost: ${ctx.out.paint('bold', money(answer.estimatedCostPerHour))}/hour, at most ${money(most)} if it runs to its ${formatDuration(spec.timeoutSeconds)} timeout\n`);
    }
    // The hold its lease takes on your credit: without it the job waits, with the same words.
    if (answer.credit) out.write(`credit: ${answer.credit.fits ? '' : ctx.out.paint('bold', 'it would wait: ')}${printable(answer.credit.detail)}\n`);
  } else {
    out.write(`No node can take ${spec.name} right now; it would wait in the queue.\n`);
  }
  if (answer.ruledOut.length) {
    out.write(`\n${answer.fits ? 'other nodes' : 'why not'}:\n`);
    for (const r of answer.ruledOut) out.write(`  ${printable(r.detail)}\n`);
  } else if (!answer.fits) {
    out.write('  no node is registered yet\n');
  }
  return answer.fits ? 0 : 1;
}
