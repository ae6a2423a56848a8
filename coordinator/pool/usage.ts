import { sql, type SQL } from 'drizzle-orm';
import type { JobStatus } from '../../shared/jobs.ts';
import { fromMicros } from '../../shared/money.ts';
import { MeteredUsage, type Usage, type UsageDay, type UsageJob, type UsageQuery, type UsageSide } from '../../shared/pool.ts';
import { toNumber, type Database } from '../db/open.ts';
import { ApiError } from '../errors.ts';
import { ledgerId } from '../ledger/ledger.ts';

const n = toNumber;
const dayMs = 86_400_000;
const dayOf = (d: Date) => d.toISOString().slice(0, 10);
const toDate = (v: unknown) => (v instanceof Date ? v : new Date(String(v)));

// Seconds of GPU and CPU from jobs.usage (MeteredUsage), read defensively: a row written before
// metering, or by an older coordinator, counts as zero rather than failing the report.
const gpuSecondsOf = sql`(case when jsonb_typeof(j.usage -> 'gpuSeconds') = 'object' then
  (select coalesce(sum(case when jsonb_typeof(e.value) = 'number' then (e.value #>> '{}')::float8 else 0 end), 0)
   from jsonb_each(j.usage -> 'gpuSeconds') e) else 0 end)`;
const cpuSecondsOf = sql`(case when jsonb_typeof(j.usage -> 'cpuCoreSeconds') = 'number' then (j.usage ->> 'cpuCoreSeconds')::float8 else 0 end)`;

/**
 * What a provider earned, one row per job and node: from the ledger's lines where a job was billed
 * through it (each lease posts to the provider of the node that ran it, net of the platform's fee,
 * dated by its last line), else (work that cost nothing, jobs from before the ledger) from the job
 * on the node it ended on. Shaped as a `jobs j` row for side().
 */
function earningsOf(accountId: string): SQL {
  const provider = ledgerId.provider(accountId);
  return sql`(
    select j.id, j.name, j.status, l.node_id, max(l.created_at) as finished_at, sum(l.amount) as cost_micros, null::jsonb as usage
    from (
      select job_id, node_id, created_at, amount from ledger_transfers where credit_account_id = ${provider} and kind = 'post'
      union all
      select job_id, node_id, created_at, -amount from ledger_transfers where debit_account_id = ${provider} and code = 'fee'
    ) l join jobs j on j.id = l.job_id
    group by j.id, j.name, j.status, l.node_id
    union all
    select j.id, j.name, j.status, j.node_id, j.finished_at, j.cost_micros, j.usage
    from nodes n join jobs j on j.node_id = n.id
    where n.account_id = ${accountId} and not exists (select 1 from ledger_transfers t where t.job_id = j.id and t.code = 'hold')
  ) j`;
}

interface Window {
  since: Date;
  /** Exclusive: the day after `until`. */
  end: Date;
}

/**
 * One side of the ledger over the window: `scope` picks the jobs (a client's own, or those that
 * ran on a provider's nodes). Only finished jobs with a recorded cost count.
 */
async function side(database: Database, scope: SQL, from: SQL, w: Window, limit: number, showNames: boolean): Promise<UsageSide> {
  const range = sql`j.finished_at is not null and j.finished_at >= ${w.since.toISOString()}::timestamptz
    and j.finished_at < ${w.end.toISOString()}::timestamptz and j.cost_micros is not null`;
  const [days, jobs] = await Promise.all([
    database.rows<{ day: unknown; jobs: unknown; micros: unknown; gpu: unknown; cpu: unknown }>(sql`
      select to_char(date_trunc('day', j.finished_at at time zone 'UTC'), 'YYYY-MM-DD') as day, count(*) as jobs,
        coalesce(sum(j.cost_micros), 0) as micros, coalesce(sum(${gpuSecondsOf}), 0) as gpu, coalesce(sum(${cpuSecondsOf}), 0) as cpu
      from ${from} where ${scope} and ${range}
      group by 1 order by 1`),
    database.rows<{ id: string; name: string; status: JobStatus; node_id: string | null; finished_at: unknown; cost_micros: unknown; usage: unknown }>(sql`
      select j.id, j.name, j.status, j.node_id, j.finished_at, j.cost_micros, j.usage
      from ${from} where ${scope} and ${range}
      order by j.finished_at desc, j.id desc limit ${limit}`),
  ]);
  const byDay: UsageDay[] = days.map((d) => ({
    day: String(d.day),
    jobs: n(d.jobs),
    amount: fromMicros(n(d.micros)),
    gpuSeconds: Math.round(Number(d.gpu) * 1000) / 1000,
    cpuCoreSeconds: Math.round(Number(d.cpu) * 1000) / 1000,
  }));
  const byJob: UsageJob[] = jobs.map((j) => {
    const raw = typeof j.usage === 'string' ? JSON.parse(j.usage) : j.usage;
    const usage = MeteredUsage.safeParse(raw);
    return {
      jobId: j.id,
      name: showNames ? j.name : null,
      status: j.status,
      nodeId: j.node_id,
      finishedAt: toDate(j.finished_at).toISOString(),
      amount: fromMicros(n(j.cost_micros)),
      usage: usage.success ? usage.data : null,
    };
  });
  const totalMicros = days.reduce((s, d) => s + n(d.micros), 0);
  return { total: fromMicros(totalMicros), jobs: byDay.reduce((s, d) => s + d.jobs, 0), byDay, byJob };
}

/**
 * A client's spend (its own jobs) and a provider's earnings (jobs that ran on its nodes), by day
 * and by job, from the usage and cost each finished job recorded. Which sides an account sees
 * follows its key's scopes.
 */
export async function usageReport(
  database: Database,
  accountId: string,
  may: { client: boolean; provider: boolean },
  q: UsageQuery,
  now: Date,
): Promise<Usage> {
  const until = q.until ? new Date(`${q.until}T00:00:00Z`) : new Date(Date.parse(dayOf(now)));
  const since = q.since ? new Date(`${q.since}T00:00:00Z`) : new Date(until.getTime() - 29 * dayMs);
  if (Number.isNaN(since.getTime()) || Number.isNaN(until.getTime())) throw new ApiError('validation', 'since and until are days like 2025-01-31');
  if (since > until) throw new ApiError('validation', 'since is after until', [{ path: 'query.since', message: 'after until' }]);
  if (until.getTime() - since.getTime() > 366 * dayMs) {
    throw new ApiError('validation', 'at most 366 days at once', [{ path: 'query.since', message: 'more than 366 days before until' }]);
  }
  const w: Window = { since, end: new Date(until.getTime() + dayMs) };
  const wantClient = may.client && (!q.role || q.role === 'client');
  const wantProvider = may.provider && (!q.role || q.role === 'provider');
  if (q.role && !(q.role === 'client' ? may.client : may.provider)) {
    throw new ApiError('forbidden', `this key lacks the ${q.role} scope`);
  }
  const [spend, earnings] = await Promise.all([
    wantClient ? side(database, sql`j.account_id = ${accountId}`, sql`jobs j`, w, q.limit, true) : null,
    // Another tenant's job: the provider sees its id, node and amount, never its name.
    wantProvider ? side(database, sql`true`, earningsOf(accountId), w, q.limit, false) : null,
  ]);
  return { since: dayOf(since), until: dayOf(until), spend, earnings };
}
