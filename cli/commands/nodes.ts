import { listAll } from '../api.ts';
import { type Command, type Context, flagValue, list, str } from '../command.ts';
import { UsageError } from '../errors.ts';
import { ago, type Column, table } from '../output.ts';
import { formatSizeMb, parseDurationSeconds, parsePair, parseWholeNumber } from '../units.ts';

// TODO(issue 4): import the node shape from shared/nodes.ts once it lands; until then the
// fields DESIGN.md names are read defensively so a renamed field shows as "-", not a crash.
interface NodeGpu {
  id: string;
  model: string;
  memoryMb?: number;
  jobId?: string | null;
  utilizationPct?: number | null;
}
interface ApiNode {
  id: string;
  name: string;
  status: string;
  draining?: boolean;
  region?: string | null;
  gpus?: NodeGpu[];
  capacity?: { cpuMillis?: number; memoryMb?: number };
  allocated?: { cpuMillis?: number; memoryMb?: number };
  prices?: { gpuHour?: number; cpuHour?: number };
  lastHeartbeatAt?: string | null;
}

export function gpuCounts(gpus: NodeGpu[] | undefined): string {
  if (!gpus?.length) return '-';
  const byModel = new Map<string, { total: number; free: number }>();
  for (const g of gpus) {
    const m = byModel.get(g.model) ?? { total: 0, free: 0 };
    m.total++;
    if (!g.jobId) m.free++;
    byModel.set(g.model, m);
  }
  return [...byModel].map(([model, c]) => `${c.free}/${c.total} ${model.replace(/^NVIDIA /, '')}`).join(', ');
}

const used = (alloc: number | undefined, cap: number | undefined, fmt: (n: number) => string) =>
  cap === undefined ? '-' : `${fmt(alloc ?? 0)}/${fmt(cap)}`;

const nodeColumns = (ctx: Context): Column<ApiNode>[] => [
  { header: 'ID', value: (n) => n.id },
  { header: 'NAME', value: (n) => n.name, flex: true },
  { header: 'STATUS', value: (n) => (n.draining ? `${n.status},draining` : n.status), paint: (t) => ctx.out.status(t.split(',')[0]!) + (t.includes(',') ? ctx.out.paint('yellow', ',draining') : '') },
  { header: 'GPUS FREE', value: (n) => gpuCounts(n.gpus), flex: true },
  { header: 'CPU USED', value: (n) => used(n.allocated?.cpuMillis, n.capacity?.cpuMillis, (m) => String(m / 1000)), right: true },
  { header: 'MEMORY USED', value: (n) => used(n.allocated?.memoryMb, n.capacity?.memoryMb, formatSizeMb), right: true },
  { header: 'GPU-HOUR', value: (n) => (n.prices?.gpuHour !== undefined ? n.prices.gpuHour.toFixed(2) : '-'), right: true },
  { header: 'REGION', value: (n) => n.region ?? '-' },
  { header: 'LAST SEEN', value: (n) => ago(n.lastHeartbeatAt) },
];

export const nodes: Command = {
  name: 'nodes',
  summary: 'List your nodes (as a provider): state, free GPUs, allocations, prices.',
  usage: ['nodes [--json]'],
  flags: { json: { type: 'boolean', help: 'print the nodes as JSON' } },
  positionals: { min: 0, max: 0 },
  async run(ctx, { values }) {
    const { api } = await ctx.connect();
    const items = await listAll<ApiNode>(api, '/v1/nodes', {}, 100_000);
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

interface CreatedToken {
  token: string;
  expiresAt?: string;
  uses?: number;
  usesLeft?: number;
}

export const tokens: Command = {
  name: 'tokens',
  summary: 'Create an enrollment token, and print the gantry-agent join line to paste on the machine.',
  usage: ['tokens create [--uses N] [--expires DURATION] [--label K=V]...'],
  description: 'The token is shown this once. Nodes that join with it get its labels.',
  flags: {
    uses: { type: 'string', arg: 'N', help: 'how many machines may join with it (default 1)' },
    expires: { type: 'string', arg: 'DURATION', help: 'how long it is good for: 30m, 1h, 7d (default 1h)' },
    label: { type: 'string', arg: 'K=V', multiple: true, help: 'label for the nodes that join with it' },
    json: { type: 'boolean', help: 'print the answer as JSON' },
  },
  positionals: { min: 1, max: 1 },
  async run(ctx, { values, positionals }) {
    if (positionals[0] !== 'create') throw new UsageError(`unknown tokens command "${positionals[0]}" (there is: create)`, 'tokens');
    const uses = flagValue('tokens', 'uses', str(values, 'uses'), (t) => parseWholeNumber(t, 1, 1_000_000)) ?? 1;
    const expiresInSeconds = flagValue('tokens', 'expires', str(values, 'expires'), parseDurationSeconds) ?? 3600;
    const labels: Record<string, string> = {};
    for (const l of list(values, 'label')) {
      const [k, v] = flagValue('tokens', 'label', l, parsePair)!;
      labels[k] = v;
    }
    const { api, login } = await ctx.connect();
    const created = await api.post<CreatedToken>('/v1/enrollment-tokens', { uses, expiresInSeconds, labels });
    if (values.json) {
      ctx.stdout.write(`${JSON.stringify(created, null, 2)}\n`);
      return;
    }
    const until = created.expiresAt ? `, until ${created.expiresAt}` : '';
    ctx.stdout.write(
      `Enrollment token (shown only this once; ${uses} use${uses === 1 ? '' : 's'}${until}):\n` +
        `  ${created.token}\n\n` +
        'On the machine to add, run:\n' +
        `  gantry-agent join --coordinator ${login.coordinator} --token ${created.token}\n`,
    );
  },
};
