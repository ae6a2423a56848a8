import { EnrollmentToken, EnrollmentTokenInfo, Node, type NodeGpu } from '../../shared/nodes.ts';
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
    const items = await listAll(api, '/v1/nodes', Node, { status: str(values, 'status') }, 100_000);
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

/** What a listed token is good for now. */
function tokenState(t: EnrollmentTokenInfo, now = Date.now()): string {
  if (t.revokedAt) return 'revoked';
  if (Date.parse(t.expiresAt) <= now) return 'expired';
  return t.usesLeft > 0 ? 'usable' : 'used up';
}

const tokenColumns: Column<EnrollmentTokenInfo>[] = [
  { header: 'ID', value: (t) => t.id },
  { header: 'PREFIX', value: (t) => `gnt_${t.prefix}` },
  { header: 'STATE', value: (t) => tokenState(t) },
  { header: 'USES LEFT', value: (t) => String(t.usesLeft), right: true },
  { header: 'EXPIRES', value: (t) => t.expiresAt },
  { header: 'LABELS', value: (t) => Object.entries(t.labels).map(([k, v]) => `${k}=${v}`).join(',') || '-', flex: true },
];

export const tokens: Command = {
  name: 'tokens',
  summary: 'Enrollment tokens: create one (and print the gantry-agent join line), list them, revoke one.',
  usage: ['tokens create [--uses N] [--expires DURATION] [--label K=V]...', 'tokens list [--json]', 'tokens revoke ID'],
  description: 'A token is shown once, at creation. Nodes that join with it get its labels. A revoked token lets no more machines join; nodes that joined stay.',
  flags: {
    uses: { type: 'string', arg: 'N', help: 'how many machines may join with it (default 1)' },
    expires: { type: 'string', arg: 'DURATION', help: 'how long it is good for, 1m to 30d: 30m, 1h, 7d (default 1d)' },
    label: { type: 'string', arg: 'K=V', multiple: true, help: 'label for the nodes that join with it' },
    json: { type: 'boolean', help: 'print the answer as JSON' },
  },
  positionals: { min: 1, max: 2 },
  async run(ctx, { values, positionals }) {
    const [sub, id] = positionals;
    if (sub === 'list' || sub === 'revoke') {
      if (sub === 'revoke' && !id) throw new UsageError('tokens revoke needs the token id (gantry tokens list shows them)', 'tokens');
      if (sub === 'list' && id) throw new UsageError('tokens list takes no argument', 'tokens');
      const { api } = await ctx.connect();
      if (sub === 'revoke') {
        const revoked = await api.delete(`/v1/enrollment-tokens/${encodeURIComponent(id!)}`, EnrollmentTokenInfo);
        ctx.stdout.write(values.json ? `${JSON.stringify(revoked, null, 2)}\n` : `Revoked ${revoked.id}: no machine joins with it any more.\n`);
        return;
      }
      const items = await listAll(api, '/v1/enrollment-tokens', EnrollmentTokenInfo, {}, 100_000);
      if (values.json) ctx.stdout.write(`${JSON.stringify(items, null, 2)}\n`);
      else if (!items.length) ctx.stdout.write('No enrollment tokens yet: gantry tokens create makes one.\n');
      else ctx.stdout.write(table(tokenColumns, items, { painter: ctx.out, width: ctx.stdoutIsTerminal ? ctx.stdout.columns : undefined }));
      return;
    }
    if (sub !== 'create') throw new UsageError(`unknown tokens command "${sub}" (there are: create, list, revoke)`, 'tokens');
    if (id) throw new UsageError('tokens create takes no argument', 'tokens');
    const uses = flagValue('tokens', 'uses', str(values, 'uses'), (t) => parseWholeNumber(t, 1, 10_000)) ?? 1;
    const expiresInSeconds = flagValue('tokens', 'expires', str(values, 'expires'), parseDurationSeconds) ?? 86_400;
    const labels: Record<string, string> = {};
    for (const l of list(values, 'label')) {
      const [k, v] = flagValue('tokens', 'label', l, parsePair)!;
      labels[k] = v;
    }
    const { api, login } = await ctx.connect();
    const created = await api.post('/v1/enrollment-tokens', { uses, expiresInSeconds, ...(Object.keys(labels).length ? { labels } : {}) }, EnrollmentToken);
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
