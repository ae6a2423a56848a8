import type { EnrollmentToken, Node, NodeGpu } from '../../shared/nodes.ts';
import { listAll } from '../api.ts';
import { type Command, type Context, flagValue, list, str } from '../command.ts';
import { UsageError } from '../errors.ts';
import { ago, type Column, printable, table } from '../output.ts';
import { formatSizeMb, parseDurationSeconds, parsePair, parseWholeNumber } from '../units.ts';

export function gpuCounts(gpus: NodeGpu[]): string {
  if (!gpus.length) return '-';
  const byModel = new Map<string, { total: number; free: number }>();
  for (const g of gpus) {
    const model = g.mig ? `${g.model} MIG` : g.model;
    const m = byModel.get(model) ?? { total: 0, free: 0 };
    m.total++;
    if (!g.jobId) m.free++;
    byModel.set(model, m);
  }
  return [...byModel].map(([model, c]) => `${c.free}/${c.total} ${model.replace(/^NVIDIA /, '')}`).join(', ');
}

const cores = (n: number) => String(Math.round(n * 10) / 10);

/** Mean live utilization of the node's GPUs, from its last heartbeat. */
function utilization(gpus: NodeGpu[]): string {
  const known = gpus.map((g) => g.metrics.utilizationPct).filter((u): u is number => u !== null && u !== undefined);
  return known.length ? `${Math.round(known.reduce((a, b) => a + b, 0) / known.length)}%` : '-';
}

const nodeColumns = (ctx: Context): Column<Node>[] => [
  { header: 'ID', value: (n) => n.id },
  { header: 'NAME', value: (n) => n.name, flex: true },
  {
    header: 'STATUS',
    value: (n) => (n.draining ? `${n.status},draining` : n.status),
    paint: (t) => t.split(',').map((part, i) => (i ? ctx.out.paint('yellow', part) : ctx.out.status(part))).join(','),
  },
  { header: 'GPUS FREE', value: (n) => gpuCounts(n.gpus), flex: true },
  { header: 'GPU UTIL', value: (n) => utilization(n.gpus), right: true },
  { header: 'CPU USED', value: (n) => `${cores(n.allocated.cpu)}/${cores(n.capacity.cpu)}`, right: true },
  { header: 'MEM USED', value: (n) => `${formatSizeMb(n.allocated.memoryMb)}/${formatSizeMb(n.capacity.memoryMb)}`, right: true },
  { header: 'GPU-HOUR', value: (n) => n.priceGpuHour.toFixed(2), right: true },
  { header: 'REGION', value: (n) => n.region ?? '-' },
  { header: 'LAST SEEN', value: (n) => ago(n.lastHeartbeatAt) },
];

export const nodes: Command = {
  name: 'nodes',
  summary: 'List your nodes (as a provider): state, free GPUs, allocations, prices.',
  usage: ['nodes [--status online|offline|retired] [--json]'],
  flags: {
    status: { type: 'string', arg: 'STATUS', help: 'only nodes in this state' },
    json: { type: 'boolean', help: 'print the nodes as JSON' },
  },
  positionals: { min: 0, max: 0 },
  async run(ctx, { values }) {
    const { api } = await ctx.connect();
    const items = await listAll<Node>(api, '/v1/nodes', { status: str(values, 'status') }, 100_000);
    if (values.json) {
      ctx.stdout.write(`${JSON.stringify(items, null, 2)}\n`);
      return;
    }
    if (!items.length) {
      ctx.stdout.write('No nodes yet. Add one: gantry tokens create, then run the join line it prints on the machine.\n');
      return;
    }
    ctx.stdout.write(table(nodeColumns(ctx), items, { painter: ctx.out, width: ctx.stdoutIsTerminal ? ctx.stdout.columns : undefined }));
  },
};

export const tokens: Command = {
  name: 'tokens',
  summary: 'Create an enrollment token, and print the gantry-agent join line to paste on the machine.',
  usage: ['tokens create [--uses N] [--expires DURATION] [--label K=V]...'],
  description: 'The token is shown this once. Nodes that join with it get its labels.',
  flags: {
    uses: { type: 'string', arg: 'N', help: 'how many machines may join with it (default 1)' },
    expires: { type: 'string', arg: 'DURATION', help: 'how long it is good for, 1m to 30d: 30m, 1h, 7d (default 1d)' },
    label: { type: 'string', arg: 'K=V', multiple: true, help: 'label for the nodes that join with it' },
    json: { type: 'boolean', help: 'print the answer as JSON' },
  },
  positionals: { min: 1, max: 1 },
  async run(ctx, { values, positionals }) {
    if (positionals[0] !== 'create') throw new UsageError(`unknown tokens command "${positionals[0]}" (there is: create)`, 'tokens');
    const uses = flagValue('tokens', 'uses', str(values, 'uses'), (t) => parseWholeNumber(t, 1, 10_000)) ?? 1;
    const expiresInSeconds = flagValue('tokens', 'expires', str(values, 'expires'), parseDurationSeconds) ?? 86_400;
    const labels: Record<string, string> = {};
    for (const l of list(values, 'label')) {
      const [k, v] = flagValue('tokens', 'label', l, parsePair)!;
      labels[k] = v;
    }
    const { api, login } = await ctx.connect();
    const created = await api.post<EnrollmentToken>('/v1/enrollment-tokens', { uses, expiresInSeconds, ...(Object.keys(labels).length ? { labels } : {}) });
    if (values.json) {
      ctx.stdout.write(`${JSON.stringify(created, null, 2)}\n`);
      return;
    }
    const labelText = printable(Object.entries(created.labels).map(([k, v]) => `${k}=${v}`).join(', '));
    ctx.stdout.write(
      `Enrollment token (shown only this once; ${created.usesLeft} use${created.usesLeft === 1 ? '' : 's'}, until ${created.expiresAt}${labelText ? `; nodes get ${labelText}` : ''}):\n` +
        `  ${created.token}\n\n` +
        'On the machine to add, run:\n' +
        `  gantry-agent join --coordinator ${login.coordinator} --token ${created.token}\n`,
    );
  },
};
