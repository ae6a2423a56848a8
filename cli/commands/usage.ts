import { Usage, type UsageDay, type UsageJob, type UsageSide } from '../../shared/pool.ts';
import { type Command, type Context, str } from '../command.ts';
import { UsageError } from '../errors.ts';
import { type Column, table } from '../output.ts';
import { formatDuration } from '../units.ts';

const money = (n: number) => n.toFixed(2);
const dayPattern = /^\d{4}-\d{2}-\d{2}$/;

function gpuSeconds(job: UsageJob): number {
  return job.usage ? Object.values(job.usage.gpuSeconds).reduce((a, b) => a + b, 0) : 0;
}

function showSide(ctx: Context, title: string, side: UsageSide, amountHeader: string) {
  ctx.stdout.write(`${title}: ${ctx.out.paint('bold', money(side.total))} over ${side.jobs} job${side.jobs === 1 ? '' : 's'}\n`);
  if (side.byDay.length) {
    const cols: Column<UsageDay>[] = [
      { header: 'DAY', value: (d) => d.day },
      { header: 'JOBS', value: (d) => String(d.jobs), right: true },
      { header: 'GPU TIME', value: (d) => formatDuration(d.gpuSeconds), right: true },
      { header: 'CPU TIME', value: (d) => formatDuration(d.cpuCoreSeconds), right: true },
      { header: amountHeader, value: (d) => money(d.amount), right: true },
    ];
    ctx.stdout.write(`\n${table(cols, side.byDay, { painter: ctx.out })}`);
  }
  if (side.byJob.length) {
    const cols: Column<UsageJob>[] = [
      { header: 'JOB', value: (j) => j.jobId },
      { header: 'NAME', value: (j) => j.name ?? '-', flex: true },
      { header: 'STATUS', value: (j) => j.status, paint: (t) => ctx.out.status(t) },
      { header: 'NODE', value: (j) => j.nodeId ?? '-' },
      { header: 'RAN', value: (j) => (j.usage ? formatDuration(j.usage.seconds) : '-'), right: true },
      { header: 'GPU TIME', value: (j) => formatDuration(gpuSeconds(j)), right: true },
      { header: amountHeader, value: (j) => money(j.amount), right: true },
    ];
    ctx.stdout.write(`\n${table(cols, side.byJob, { painter: ctx.out, width: ctx.stdoutIsTerminal ? ctx.stdout.columns : undefined })}`);
  }
}

export const usage: Command = {
  name: 'usage',
  summary: 'What you spent (as a client) and earned (as a provider), by day and by job.',
  usage: ['usage [--since DAY] [--until DAY] [--role client|provider] [--json]'],
  description: 'Amounts are at the prices in force when each job was leased. Days are UTC.',
  flags: {
    since: { type: 'string', arg: 'DAY', help: 'first day counted, e.g. 2026-11-01 (default: 30 days back)' },
    until: { type: 'string', arg: 'DAY', help: 'last day counted (default: today)' },
    role: { type: 'string', arg: 'ROLE', help: 'only spend (client) or only earnings (provider)' },
    json: { type: 'boolean', help: 'print the answer as JSON' },
  },
  positionals: { min: 0, max: 0 },
  async run(ctx, { values }) {
    const q = new URLSearchParams();
    for (const name of ['since', 'until'] as const) {
      const v = str(values, name);
      if (v === undefined) continue;
      if (!dayPattern.test(v)) throw new UsageError(`--${name}: "${v}" is not a day like 2026-11-01`, 'usage');
      q.set(name, v);
    }
    const role = str(values, 'role');
    if (role !== undefined) {
      if (role !== 'client' && role !== 'provider') throw new UsageError(`--role: "${role}" is not client or provider`, 'usage');
      q.set('role', role);
    }
    const { api } = await ctx.connect();
    const u = await api.get(`/v1/usage${q.size ? `?${q}` : ''}`, Usage);
    if (values.json) {
      ctx.stdout.write(`${JSON.stringify(u, null, 2)}\n`);
      return;
    }
    ctx.stdout.write(ctx.out.paint('dim', `${u.since} to ${u.until} (UTC)\n`));
    if (u.spend) showSide(ctx, 'spent', u.spend, 'SPENT');
    if (u.spend && u.earnings) ctx.stdout.write('\n');
    if (u.earnings) showSide(ctx, 'earned', u.earnings, 'EARNED');
    if (!u.spend && !u.earnings) ctx.stdout.write('Nothing to show for this key.\n');
  },
};
