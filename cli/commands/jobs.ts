import { isTerminal, Job, JobEventList, jobStatuses, type JobEvent, type JobStatus, type MeteredUsage } from '../../shared/jobs.ts';
import { getJob, idArg, listAll, naming } from '../api.ts';
import { type Command, type Context, flagValue, str } from '../command.ts';
import { UsageError } from '../errors.ts';
import { describeEnd, followJob, jobExitCode, taskSummary } from '../follow.ts';
import { ago, type Column, details, printable, table } from '../output.ts';
import { formatDuration, formatSizeMb, parseWholeNumber } from '../units.ts';
import { serviceLine } from './services.ts';

export function gpuSummary(job: Job): string {
  const r = job.spec.resources;
  if (!r.gpus) return '-';
  return `${r.gpus}×${r.gpu?.model ? ` ${r.gpu.model}` : ''}`.trim();
}

export function runTime(job: Job, now = Date.now()): string {
  if (!job.startedAt) return '-';
  const end = job.finishedAt ? Date.parse(job.finishedAt) : now;
  return formatDuration((end - Date.parse(job.startedAt)) / 1000);
}

const jobColumns = (ctx: Context, arrays: boolean): Column<Job>[] => [
  { header: 'ID', value: (j) => j.id },
  { header: 'NAME', value: (j) => j.name, flex: true },
  // One line per array: how many of its tasks ended, of how many.
  ...(arrays ? [{ header: 'TASKS', value: (j: Job) => (j.tasks ? `${j.tasks.succeeded + j.tasks.failed + j.tasks.cancelled}/${j.tasks.count}` : '-'), right: true }] : []),
  { header: 'STATUS', value: (j) => (j.cancelRequestedAt && !['cancelled', 'succeeded', 'failed'].includes(j.status) ? `${j.status}*` : j.status), paint: (t) => ctx.out.status(t) },
  { header: 'GPUS', value: gpuSummary },
  { header: 'NODE', value: (j) => j.nodeId ?? '-' },
  { header: 'CREATED', value: (j) => ago(j.createdAt) },
  { header: 'RAN', value: (j) => runTime(j), right: true },
];

const tableWidth = (ctx: Context) => (ctx.stdoutIsTerminal ? ctx.stdout.columns : undefined);

export const jobs: Command = {
  name: 'jobs',
  summary: 'List your jobs, newest first.',
  usage: ['jobs [--status STATUS] [--limit N] [--json]'],
  flags: {
    status: { type: 'string', arg: 'STATUS', help: `only jobs in this state (${jobStatuses.join(', ')})` },
    limit: { type: 'string', arg: 'N', help: 'at most N jobs (default 50)' },
    json: { type: 'boolean', help: 'print the jobs as a JSON array, for scripts' },
  },
  positionals: { min: 0, max: 0 },
  async run(ctx, { values }) {
    const status = str(values, 'status');
    if (status !== undefined && !jobStatuses.includes(status as JobStatus)) {
      throw new UsageError(`--status: "${status}" is not one of ${jobStatuses.join(', ')}`, 'jobs');
    }
    const limit = flagValue('jobs', 'limit', str(values, 'limit'), (t) => parseWholeNumber(t, 1, 100_000)) ?? 50;
    const { api } = await ctx.connect();
    const items = await listAll(api, '/v1/jobs', Job, { status }, limit);
    if (values.json) {
      ctx.stdout.write(`${JSON.stringify(items, null, 2)}\n`);
      return;
    }
    if (!items.length) {
      ctx.stdout.write(status ? `No ${status} jobs.\n` : 'No jobs yet. Submit one with gantry submit.\n');
      return;
    }
    ctx.stdout.write(table(jobColumns(ctx, items.some((j) => j.tasks)), items, { painter: ctx.out, width: tableWidth(ctx) }));
  },
};

export const tasks: Command = {
  name: 'tasks',
  summary: "List a job array's tasks in index order.",
  usage: ['tasks ID [--status STATUS] [--limit N] [--json]'],
  flags: {
    status: { type: 'string', arg: 'STATUS', help: `only tasks in this state (${jobStatuses.join(', ')})` },
    limit: { type: 'string', arg: 'N', help: 'at most N tasks (default 100)' },
    json: { type: 'boolean', help: 'print the tasks as a JSON array, for scripts' },
  },
  positionals: { min: 1, max: 1 },
  async run(ctx, { values, positionals }) {
    const id = idArg('job', positionals[0], 'tasks');
    const status = str(values, 'status');
    if (status !== undefined && !jobStatuses.includes(status as JobStatus)) {
      throw new UsageError(`--status: "${status}" is not one of ${jobStatuses.join(', ')}`, 'tasks');
    }
    const limit = flagValue('tasks', 'limit', str(values, 'limit'), (t) => parseWholeNumber(t, 1, 100_000)) ?? 100;
    const { api } = await ctx.connect();
    const items = await naming('job', id, listAll(api, `/v1/jobs/${id}/tasks`, Job, { status }, limit));
    if (values.json) {
      ctx.stdout.write(`${JSON.stringify(items, null, 2)}\n`);
      return;
    }
    if (!items.length) {
      ctx.stdout.write(status ? `No ${status} tasks.\n` : 'No tasks.\n');
      return;
    }
    const cols: Column<Job>[] = [
      { header: 'INDEX', value: (t) => String(t.taskIndex), right: true },
      ...jobColumns(ctx, false).filter((c) => c.header !== 'NAME' && c.header !== 'CREATED'),
      { header: 'EXIT', value: (t) => (t.exitCode === null ? '-' : String(t.exitCode)), right: true },
    ];
    ctx.stdout.write(table(cols, items, { painter: ctx.out, width: tableWidth(ctx) }));
  },
};

export const job: Command = {
  name: 'job',
  summary: 'Show one job: its spec, state, node, exit code and every state change.',
  usage: ['job ID [--json]'],
  flags: { json: { type: 'boolean', help: 'print the job as JSON' } },
  positionals: { min: 1, max: 1 },
  async run(ctx, { values, positionals }) {
    const id = idArg('job', positionals[0], 'job');
    const { api } = await ctx.connect();
    const j = await getJob(api, id);
    if (values.json) {
      ctx.stdout.write(`${JSON.stringify(j, null, 2)}\n`);
      return;
    }
    const { items: events } = await naming('job', id, api.get(`/v1/jobs/${id}/events`, JobEventList));
    const s = j.spec;
    const r = s.resources;
    const resources = [`${r.cpu} CPU`, formatSizeMb(r.memoryMb), r.gpus ? `${gpuSummary(j)} GPU${r.gpus > 1 ? 's' : ''}` : null]
      .filter(Boolean)
      .join(', ');
    const status = `${ctx.out.status(j.status)}${j.cancelRequestedAt && !['cancelled', 'succeeded', 'failed'].includes(j.status) ? ' (cancel requested)' : ''}`;
    ctx.stdout.write(
      details(
        [
          ['id', j.id],
          ['name', j.name],
          ['status', status],
          ['array', j.parentId ? `task ${j.taskIndex} of ${j.parentId}` : null],
          ['tasks', j.tasks ? `${taskSummary(j.tasks)}; at most ${j.tasks.maxParallel} at once (gantry tasks ${j.id})` : null],
          ['waiting', j.pendingReason],
          ['image', s.image],
          ['command', [...(s.entrypoint ?? []), ...s.command].map(shellQuote).join(' ')],
          ['resources', resources],
          ['max price', s.maxPricePerHour !== undefined ? `${s.maxPricePerHour.toFixed(2)}/hour` : null],
          ['service', serviceLine(j)],
          ['url', j.serviceUrl],
          ['node', j.nodeId],
          ['gpus', j.gpuIds?.join(', ')],
          ['attempts', j.tasks ? null : `${j.attempts} of ${j.maxAttempts}`],
          ['created', `${j.createdAt} (${ago(j.createdAt)})`],
          ['started', j.startedAt],
          ['finished', j.finishedAt],
          ['ran', j.startedAt ? runTime(j) : null],
          ['exit code', j.exitCode !== null ? String(j.exitCode) : null],
          ['error', j.error],
          ['prices', j.prices ? `${amount(j.prices.perGpuHour)}/GPU-hour, ${amount(j.prices.perCpuHour)}/CPU-hour (at lease)` : null],
          ['cost', j.prices ? `${amount(j.cost)}${isTerminal(j.status) ? '' : ' so far'}` : null],
          ['usage', j.usage ? usageLine(j.usage) : null],
          ['result', j.result !== null && j.result !== undefined ? JSON.stringify(j.result) : null],
        ],
        ctx.out,
      ),
    );
    if (events.length) {
      ctx.stdout.write('\nevents:\n');
      const cols: Column<JobEvent>[] = [
        { header: 'AT', value: (e) => e.at },
        { header: 'FROM', value: (e) => e.from ?? '-' },
        { header: 'TO', value: (e) => e.to, paint: (t) => ctx.out.status(t) },
        { header: 'REASON', value: (e) => e.reason, flex: true },
      ];
      ctx.stdout.write(table(cols, events, { painter: ctx.out, width: tableWidth(ctx) }));
    }
  },
};

/** Two decimals like every price, more when a small amount would otherwise read 0.00. */
export function amount(n: number): string {
  const fine = n.toFixed(6).replace(/0+$/, '');
  return fine.split('.')[1]!.length > 2 ? fine : n.toFixed(2);
}

function usageLine(u: MeteredUsage): string {
  const gpus = Object.entries(u.gpuSeconds).map(([model, s]) => `${formatDuration(s)} ${model}`);
  return [`${formatDuration(u.seconds)} leased`, ...(gpus.length ? [`GPU ${gpus.join(', ')}`] : []), `${u.cpuCoreSeconds} CPU-core-s`].join(', ');
}

export function shellQuote(arg: string): string {
  return /^[A-Za-z0-9_@%+=:,./-]+$/.test(arg) ? arg : `'${arg.replace(/'/g, `'\\''`)}'`;
}

export const cancel: Command = {
  name: 'cancel',
  summary: 'Cancel a job. A queued job ends at once; a running one is stopped by its node.',
  usage: ['cancel ID [--wait]'],
  flags: { wait: { type: 'boolean', short: 'w', help: 'wait until the job has stopped' } },
  positionals: { min: 1, max: 1 },
  async run(ctx, { values, positionals }) {
    const id = idArg('job', positionals[0], 'cancel');
    const { api } = await ctx.connect();
    const j = await naming('job', id, api.post(`/v1/jobs/${id}/cancel`, {}, Job));
    if (j.status === 'cancelled') {
      ctx.stdout.write(`${id} cancelled\n`);
      return;
    }
    if (!values.wait) {
      ctx.stdout.write(printable(`Cancel requested: ${id} is ${j.status} on ${j.nodeId ?? 'a node'}, which stops it at its next heartbeat`) + '\n');
      return;
    }
    const ended = await followJob(ctx, api, id, { logs: false });
    ctx.stdout.write(`${describeEnd(ended)}\n`);
  },
};

export const wait: Command = {
  name: 'wait',
  summary: "Wait for a job to end and exit with its exit code (0 if it succeeded, 1 if it ended without one).",
  usage: ['wait ID'],
  flags: {},
  positionals: { min: 1, max: 1 },
  async run(ctx, { positionals }) {
    const id = idArg('job', positionals[0], 'wait');
    const { api } = await ctx.connect();
    const ended = await followJob(ctx, api, id, { logs: false });
    ctx.stderr.write(`${describeEnd(ended)}\n`);
    return jobExitCode(ended);
  },
};
