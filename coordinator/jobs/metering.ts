// What a job used and what it costs its owner: metered from lease start at the prices recorded
// at lease, added to what earlier leases of the job used.
import { inArray } from 'drizzle-orm';
import type { MeteredUsage } from '../../shared/jobs.ts';
import type { DbOrTx } from '../db/open.ts';
import { gpus } from '../db/schema/index.ts';
import type { JobRow } from './lifecycle.ts';

const msPerHour = 3_600_000n;

/** Adds this lease's usage (lease start to `at`) and its cost at the recorded prices to what the job used before. */
export function meter(job: JobRow, gpuModels: string[], at: Date): { usage: MeteredUsage; costMicros: number } {
  const ms = Math.max(0, at.getTime() - (job.leasedAt ?? at).getTime());
  const seconds = ms / 1000;
  const before = (job.usage as MeteredUsage | null) ?? { seconds: 0, gpuSeconds: {}, cpuCoreSeconds: 0, memoryMbSeconds: 0 };
  const gpuSeconds = { ...before.gpuSeconds };
  // A GPU that vanished from the node's report is still charged, under the model it had.
  const models = gpuModels.length >= (job.gpuIds?.length ?? 0) ? gpuModels : [...gpuModels, ...Array((job.gpuIds?.length ?? 0) - gpuModels.length).fill('unknown')];
  for (const m of models) gpuSeconds[m] = round3((gpuSeconds[m] ?? 0) + seconds);
  const usage: MeteredUsage = {
    seconds: round3(before.seconds + seconds),
    gpuSeconds,
    cpuCoreSeconds: round3(before.cpuCoreSeconds + (job.cpuMillis / 1000) * seconds),
    memoryMbSeconds: round3(before.memoryMbSeconds + job.memoryMb * seconds),
  };
  return { usage, costMicros: (job.costMicros ?? 0) + leaseCostMicros(models.length, job.cpuMillis, job.priceGpuHourMicros ?? 0, job.priceCpuHourMicros ?? 0, ms) };
}

/** gpus × GPU-hour price + cores × core-hour price, for `ms`, in micro-units, exactly (rounded half up at the end). */
export function leaseCostMicros(gpuCount: number, cpuMillis: number, priceGpuHourMicros: number, priceCpuHourMicros: number, ms: number): number {
  const perHourMilli = BigInt(gpuCount) * BigInt(priceGpuHourMicros) * 1000n + BigInt(cpuMillis) * BigInt(priceCpuHourMicros);
  const total = perHourMilli * BigInt(Math.round(ms));
  const denominator = msPerHour * 1000n;
  return Number((total + denominator / 2n) / denominator);
}

const round3 = (n: number) => Math.round(n * 1000) / 1000;

/**
 * The jobs of `rows` that hold a lease, metered to `now` at their lease's prices (their GPUs'
 * models read in one query for all of them): what they cost so far.
 */
export async function meterLive(db: DbOrTx, rows: readonly JobRow[], now: Date): Promise<Map<string, ReturnType<typeof meter>>> {
  const held = rows.filter((r) => (r.status === 'leased' || r.status === 'running') && r.leasedAt);
  const out = new Map<string, ReturnType<typeof meter>>();
  if (!held.length) return out;
  const models = new Map<string, string[]>();
  const found = await db
    .select({ jobId: gpus.jobId, model: gpus.model })
    .from(gpus)
    .where(inArray(gpus.jobId, held.map((r) => r.id)));
  for (const g of found) models.set(g.jobId!, [...(models.get(g.jobId!) ?? []), g.model]);
  for (const r of held) out.set(r.id, meter(r, models.get(r.id) ?? [], now));
  return out;
}
