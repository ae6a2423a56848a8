import { type Command, str } from '../command.ts';
import { type Column, table } from '../output.ts';
import { formatDuration } from '../units.ts';

// TODO(issue 7 part 5): import the usage shape from shared/pool.ts (or shared/usage.ts) once it lands.
interface DayRow {
  day: string;
  jobs?: number;
  gpuSeconds?: number;
  spend?: number;
  earnings?: number;
  cost?: number;
}
interface JobRow {
  jobId: string;
  name?: string;
  gpuSeconds?: number;
  cpuCoreSeconds?: number;
  cost?: number;
  finishedAt?: string | null;
}
interface Usage {
  spend?: number;
  earnings?: number;
  byDay?: DayRow[];
  byJob?: JobRow[];
}

const money = (n: number | undefined) => (n === undefined ? '-' : n.toFixed(2));

export const usage: Command = {
  name: 'usage',
  summary: 'What you spent (as a client) and earned (as a provider), by day and by job.',
  usage: ['usage [--since DATE] [--json]'],
  flags: {
    since: { type: 'string', arg: 'DATE', help: 'from this day on, e.g. 2026-11-01 (default: the last 30 days)' },
    json: { type: 'boolean', help: 'print the answer as JSON' },
  },
  positionals: { min: 0, max: 0 },
  async run(ctx, { values }) {
    const since = str(values, 'since');
    const { api } = await ctx.connect();
    const u = await api.get<Usage>(`/v1/usage${since ? `?since=${encodeURIComponent(since)}` : ''}`);
    if (values.json) {
      ctx.stdout.write(`${JSON.stringify(u, null, 2)}\n`);
      return;
    }
    const totals = [u.spend !== undefined ? `spent ${money(u.spend)}` : null, u.earnings !== undefined ? `earned ${money(u.earnings)}` : null].filter(Boolean);
    if (totals.length) ctx.stdout.write(`${totals.join(', ')}\n`);
    if (u.byDay?.length) {
      const cols: Column<DayRow>[] = [
        { header: 'DAY', value: (d) => d.day },
        { header: 'JOBS', value: (d) => String(d.jobs ?? '-'), right: true },
        { header: 'GPU TIME', value: (d) => (d.gpuSeconds !== undefined ? formatDuration(d.gpuSeconds) : '-'), right: true },
        { header: 'SPENT', value: (d) => money(d.spend ?? d.cost), right: true },
        { header: 'EARNED', value: (d) => money(d.earnings), right: true },
      ];
      ctx.stdout.write(`\n${table(cols, u.byDay, { painter: ctx.out })}`);
    }
    if (u.byJob?.length) {
      const cols: Column<JobRow>[] = [
        { header: 'JOB', value: (j) => j.jobId },
        { header: 'NAME', value: (j) => j.name ?? '-', flex: true },
        { header: 'GPU TIME', value: (j) => (j.gpuSeconds !== undefined ? formatDuration(j.gpuSeconds) : '-'), right: true },
        { header: 'CPU TIME', value: (j) => (j.cpuCoreSeconds !== undefined ? formatDuration(j.cpuCoreSeconds) : '-'), right: true },
        { header: 'COST', value: (j) => money(j.cost), right: true },
      ];
      ctx.stdout.write(`\n${table(cols, u.byJob, { painter: ctx.out, width: ctx.stdoutIsTerminal ? ctx.stdout.columns : undefined })}`);
    }
    if (!totals.length && !u.byDay?.length && !u.byJob?.length) ctx.stdout.write('No usage yet.\n');
  },
};
