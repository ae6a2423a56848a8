import { sql } from 'drizzle-orm';
import type { DbOrTx } from '../db/open.ts';
import { jobs } from '../db/schema/index.ts';
import { recordEvent, type JobRow } from '../jobs/lifecycle.ts';
import { leaseCostMicros } from '../jobs/metering.ts';
import { formatAmount } from '../../shared/money.ts';
import { applyTransfers, availableOf, ensureAccounts, ledgerId, lockAccounts, type TransferInput } from './ledger.ts';

// A lease's money. It is granted against a hold on the client's credit for its first period (one
// lease TTL, or the job's timeout if shorter); once per billing period a renewal posts the time
// used to the provider (less the platform's fee) and holds the next; the end posts what was used
// and voids the rest. The lease is never extended past what is held (jobs.held_until). Work that
// costs nothing holds nothing.

export interface Billing {
  leaseTtlSeconds: number;
  periodSeconds: number;
  feeBasisPoints: number;
}

/** What the grant of one lease holds; null for work that costs nothing. */
export interface LeaseHold {
  holdId: string;
  micros: number;
  /** How long it covers (the first TTL, or the timeout), for the reason a job waits. */
  seconds: number;
  heldUntil: Date | null;
  billAt: Date | null;
  feeBasisPoints: number;
}

export function firstHold(
  p: { leaseId: string; gpuCount: number; cpuMillis: number; priceGpuHourMicros: number; priceCpuHourMicros: number; timeoutSeconds: number },
  at: Date,
  billing: Billing,
): LeaseHold | null {
  const seconds = Math.min(billing.leaseTtlSeconds, p.timeoutSeconds);
  const micros = leaseCostMicros(p.gpuCount, p.cpuMillis, p.priceGpuHourMicros, p.priceCpuHourMicros, seconds * 1000);
  if (micros <= 0) return null;
  // A job whose whole timeout is held needs no more holds: its lease renews as any other.
  const whole = p.timeoutSeconds <= billing.leaseTtlSeconds;
  return {
    holdId: `hold:${p.leaseId}:0`,
    micros,
    seconds,
    heldUntil: whole ? null : new Date(at.getTime() + seconds * 1000),
    billAt: whole ? null : new Date(at.getTime() + billing.periodSeconds * 1000),
    feeBasisPoints: billing.feeBasisPoints,
  };
}

/** The pending transfer of a grant: the client's credit held for the provider of the node. */
export function holdTransfer(h: LeaseHold, p: { clientId: string; providerId: string; jobId: string; leaseId: string; nodeId: string }): TransferInput {
  return {
    id: h.holdId,
    kind: 'pending',
    debit: ledgerId.client(p.clientId),
    credit: ledgerId.provider(p.providerId),
    amount: h.micros,
    code: 'hold',
    jobId: p.jobId,
    leaseId: p.leaseId,
    nodeId: p.nodeId,
  };
}

type Lease = Pick<
  JobRow,
  'id' | 'leaseId' | 'nodeId' | 'accountId' | 'spec' | 'gpuIds' | 'cpuMillis' | 'priceGpuHourMicros' | 'priceCpuHourMicros' | 'leasedAt'
  | 'holdId' | 'holdMicros' | 'heldUntil' | 'leaseBilledMicros' | 'feeBasisPoints' | 'costMicros'
>;

const timeoutEndMs = (job: Lease) => job.leasedAt!.getTime() + job.spec.timeoutSeconds * 1000;

/** The last instant a lease ending at `end` is billed to: not before its start, not past what is held or its timeout. */
export function billableEnd(job: Lease, end: Date): Date {
  const start = job.leasedAt!.getTime();
  let t = Math.max(start, Math.min(end.getTime(), timeoutEndMs(job)));
  if (job.heldUntil) t = Math.min(t, job.heldUntil.getTime());
  return new Date(t);
}

/** What the lease costs from its start to `end`, exactly (the metering's formula). */
function costTo(job: Lease, end: Date): number {
  return leaseCostMicros(job.gpuIds?.length ?? 0, job.cpuMillis, job.priceGpuHourMicros ?? 0, job.priceCpuHourMicros ?? 0, end.getTime() - job.leasedAt!.getTime());
}

/** The fee on a posting, rounded down (integers only). */
const feeOf = (micros: number, basisPoints: number) => Number((BigInt(micros) * BigInt(basisPoints)) / 10_000n);

/** The transfers that post `micros` of the lease's hold (void it when 0) and take the platform's fee. */
function postHold(job: Lease, providerId: string, micros: number): TransferInput[] {
  const out: TransferInput[] = [
    micros > 0
      ? { id: `post:${job.holdId}`, kind: 'post', pendingId: job.holdId!, amount: micros, code: 'usage' }
      : { id: `void:${job.holdId}`, kind: 'void', pendingId: job.holdId!, code: 'usage' },
  ];
  const fee = feeOf(micros, job.feeBasisPoints ?? 0);
  if (fee > 0) {
    out.push({
      id: `fee:${job.holdId}`,
      kind: 'posted',
      debit: ledgerId.provider(providerId),
      credit: ledgerId.fees,
      amount: fee,
      code: 'fee',
      jobId: job.id,
      leaseId: job.leaseId,
      nodeId: job.nodeId,
    });
  }
  return out;
}

async function providerOf(tx: DbOrTx, nodeId: string): Promise<string> {
  const rows = (await tx.execute(sql`select account_id from nodes where id = ${nodeId}`)) as unknown as { account_id: string }[] | { rows: { account_id: string }[] };
  const row = Array.isArray(rows) ? rows[0] : rows.rows[0];
  return row!.account_id;
}

/** The hold columns of a job whose lease ended (or that holds nothing). */
export const noHold = {
  holdId: null,
  holdMicros: null,
  heldUntil: null,
  billAt: null,
  leaseBilledMicros: null,
  leaseSeenAt: null,
  creditShortAt: null,
  feeBasisPoints: null,
} as const;

/**
 * The end of a lease, in the caller's transaction (which holds the node and job rows): posts what
 * was used up to `end` and voids the rest. Returns the job's cost with this lease's (null when
 * it held nothing: work that costs nothing, or a lease granted before the ledger).
 */
export async function settleLease(tx: DbOrTx, job: Lease, end: Date, at: Date): Promise<number | null> {
  if (!job.leasedAt || !job.nodeId || (!job.holdId && job.leaseBilledMicros === null)) return null;
  const billed = job.leaseBilledMicros ?? 0;
  // Its whole timeout was posted already: nothing is held any more.
  if (!job.holdId) return (job.costMicros ?? 0) + billed;
  const used = Math.min(Math.max(0, costTo(job, billableEnd(job, end)) - billed), job.holdMicros ?? 0);
  await applyTransfers(tx, postHold(job, await providerOf(tx, job.nodeId), used), at);
  return (job.costMicros ?? 0) + billed + used;
}

/**
 * A renewal whose billing period is due, in the heartbeat's transaction (node, then job locked
 * before): posts the time used so far and holds the next period, up to one lease TTL from now. When
 * the client's credit does not cover that, nothing moves: the lease runs out at what is held and
 * the job is marked short (it ends failed with reason credit; a deposit before then carries on).
 * Returns the job's new held_until (null: no cap).
 */
export async function billPeriod(
  tx: DbOrTx,
  job: Lease & { leaseEpoch: number; status: JobRow['status']; creditShortAt: Date | null },
  at: Date,
  billing: Billing,
): Promise<Date | null> {
  if (!job.holdId || !job.leasedAt || !job.nodeId) return job.heldUntil;
  const providerId = await providerOf(tx, job.nodeId);
  const client = ledgerId.client(job.accountId);
  await ensureAccounts(tx, [client, ledgerId.provider(providerId), ledgerId.fees]);
  const locked = await lockAccounts(tx, [client, ledgerId.provider(providerId), ledgerId.fees]);
  const billed = job.leaseBilledMicros ?? 0;
  const held = job.holdMicros ?? 0;
  const used = Math.min(Math.max(0, costTo(job, billableEnd(job, at)) - billed), held);
  const wholeEnd = timeoutEndMs(job);
  const nextEnd = new Date(Math.min(at.getTime() + billing.leaseTtlSeconds * 1000, wholeEnd));
  const next = Math.max(0, costTo(job, nextEnd) - billed - used);
  // Posting releases the unused rest of the hold; the next hold must fit in what that leaves.
  const available = availableOf(locked.get(client)!) + held - used;
  if (next > available) {
    await tx.execute(sql`update ${jobs} set credit_short_at = coalesce(credit_short_at, ${at.toISOString()}::timestamptz) where id = ${job.id}`);
    // Said once, when it first runs short: the job's events tell its owner why it will stop.
    if (!job.creditShortAt) {
      const until = job.heldUntil ? ` at ${job.heldUntil.toISOString()}` : '';
      await recordEvent(tx, job.id, job.status, `credit: the next period cannot be held (needs ${formatAmount(next)}, ${formatAmount(Math.max(0, available))} available); the lease ends${until} unless credit is added`, at);
    }
    return job.heldUntil;
  }
  const whole = nextEnd.getTime() >= wholeEnd;
  const holdId = next > 0 ? `hold:${job.leaseId}:${at.getTime()}` : null;
  const transfers = postHold(job, providerId, used);
  if (holdId) {
    transfers.push(
      holdTransfer(
        { holdId, micros: next, seconds: 0, heldUntil: null, billAt: null, feeBasisPoints: 0 },
        { clientId: job.accountId, providerId, jobId: job.id, leaseId: job.leaseId!, nodeId: job.nodeId },
      ),
    );
  }
  await applyTransfers(tx, transfers, at);
  const heldUntil = whole ? null : nextEnd;
  const billAt = whole ? null : new Date(at.getTime() + billing.periodSeconds * 1000);
  await tx
    .update(jobs)
    .set({ holdId, holdMicros: holdId ? next : null, heldUntil, billAt, leaseBilledMicros: billed + used, creditShortAt: null })
    .where(sql`${jobs.id} = ${job.id} and ${jobs.leaseEpoch} = ${job.leaseEpoch}`);
  return heldUntil;
}
