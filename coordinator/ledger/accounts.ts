import { eq, sql } from 'drizzle-orm';
import type { Balance, Ledger, LedgerLine, LedgerQuery } from '../../shared/ledger.ts';
import { fromMicros, toMicros } from '../../shared/money.ts';
import type { Db, DbOrTx } from '../db/open.ts';
import { toNumber } from '../db/open.ts';
import { accounts, ledgerAccounts } from '../db/schema/index.ts';
import { ApiError, notFound } from '../errors.ts';
import { executeRows } from '../jobs/transitions.ts';
import { applyTransfers, availableOf, ensureAccounts, findTransfer, LedgerRefused, ledgerId, readAccounts, type NewTransfer } from './ledger.ts';

// What an admin does to an account's money (deposits, payouts, adjustments, its credit limit),
// and what any key reads of its own (its balance, its statement).

async function accountKind(db: DbOrTx, accountId: string) {
  const [row] = await db.select({ kind: accounts.kind }).from(accounts).where(eq(accounts.id, accountId));
  if (!row) throw notFound('account');
  return row.kind;
}

/** The sides an account of this kind has. */
const sidesOf = (kind: string) => ({ client: kind !== 'provider', provider: kind !== 'client' });

/** The balance of each side the caller may see. */
export async function balanceOf(db: DbOrTx, accountId: string, may: { client: boolean; provider: boolean }): Promise<Balance> {
  const found = await readAccounts(db, [ledgerId.client(accountId), ledgerId.provider(accountId)]);
  const c = found.get(ledgerId.client(accountId));
  const p = found.get(ledgerId.provider(accountId));
  return {
    accountId,
    client: may.client
      ? {
          balance: fromMicros((c?.creditsPosted ?? 0) - (c?.debitsPosted ?? 0)),
          held: fromMicros(c?.debitsPending ?? 0),
          available: fromMicros(c ? availableOf(c) : 0),
          creditLimit: fromMicros(c?.creditLimit ?? 0),
        }
      : null,
    provider: may.provider
      ? {
          // Earned net of the platform's fee: fees are debits like payouts, told apart by code.
          earned: fromMicros((p?.creditsPosted ?? 0) - (await feesOf(db, accountId))),
          paidOut: fromMicros(await paidOutOf(db, accountId)),
          payable: fromMicros(p ? p.creditsPosted - p.debitsPosted : 0),
        }
      : null,
  };
}

async function sumDebits(db: DbOrTx, account: string, code: string): Promise<number> {
  const [row] = await executeRows<{ s: unknown }>(
    db,
    sql`select coalesce(sum(amount), 0) as s from ledger_transfers where debit_account_id = ${account} and code = ${code} and kind = 'posted'`,
  );
  return toNumber(row?.s);
}
const feesOf = (db: DbOrTx, accountId: string) => sumDebits(db, ledgerId.provider(accountId), 'fee');
const paidOutOf = (db: DbOrTx, accountId: string) => sumDebits(db, ledgerId.provider(accountId), 'payout');

/**
 * One admin movement, idempotent on its reference: the same reference again returns the first
 * transfer (a different amount under it is a conflict).
 */
async function adminTransfer(db: Db, t: NewTransfer, accountId: string, kind: string, at: Date, refused: (e: LedgerRefused) => string) {
  return db.transaction(async (tx) => {
    let replayed = false;
    try {
      const r = await applyTransfers(tx, [t], at);
      replayed = r.replayed.has(t.id);
    } catch (err) {
      if (err instanceof LedgerRefused) throw new ApiError('conflict', refused(err));
      throw err;
    }
    if (replayed) {
      const first = await findTransfer(tx, t.id);
      if (first && (first.amount !== t.amount || first.debitAccountId !== t.debit || first.creditAccountId !== t.credit)) {
        throw new ApiError('conflict', `reference ${JSON.stringify(t.reference)} was already used for a different transfer`);
      }
    }
    return { transferId: t.id, replayed, balance: await balanceOf(tx, accountId, sidesOf(kind)) };
  });
}

export async function deposit(db: Db, accountId: string, amount: number, reference: string, at: Date) {
  const kind = await accountKind(db, accountId);
  if (kind === 'provider') throw new ApiError('validation', 'a provider account has no credit to deposit to', [{ path: 'id', message: 'a provider account' }]);
  const t: NewTransfer = {
    id: `deposit:${accountId}:${reference}`,
    kind: 'posted',
    debit: ledgerId.bank,
    credit: ledgerId.client(accountId),
    amount: toMicros(amount),
    code: 'deposit',
    reference,
  };
  return adminTransfer(db, t, accountId, kind, at, (e) => e.message);
}

export async function payout(db: Db, accountId: string, amount: number, reference: string, at: Date) {
  const kind = await accountKind(db, accountId);
  if (kind === 'client') throw new ApiError('validation', 'a client account earns nothing to pay out', [{ path: 'id', message: 'a client account' }]);
  const t: NewTransfer = {
    id: `payout:${accountId}:${reference}`,
    kind: 'posted',
    debit: ledgerId.provider(accountId),
    credit: ledgerId.bank,
    amount: toMicros(amount),
    code: 'payout',
    reference,
  };
  return adminTransfer(db, t, accountId, kind, at, () => `a payout of ${amount} is more than the provider is owed`);
}

export async function adjust(db: Db, accountId: string, req: { amount: number; reason: string; reference: string; role?: 'client' | 'provider' | undefined }, at: Date) {
  const kind = await accountKind(db, accountId);
  const role = req.role ?? (kind === 'provider' ? 'provider' : 'client');
  if ((role === 'client' && kind === 'provider') || (role === 'provider' && kind === 'client')) {
    throw new ApiError('validation', `a ${kind} account has no ${role} side`, [{ path: 'role', message: `not a ${role} account` }]);
  }
  const side = role === 'client' ? ledgerId.client(accountId) : ledgerId.provider(accountId);
  const micros = toMicros(Math.abs(req.amount));
  const t: NewTransfer = {
    id: `adjustment:${accountId}:${req.reference}`,
    kind: 'posted',
    debit: req.amount > 0 ? ledgerId.bank : side,
    credit: req.amount > 0 ? side : ledgerId.bank,
    amount: micros,
    code: 'adjustment',
    reference: `${req.reference}: ${req.reason}`,
  };
  return adminTransfer(db, t, accountId, kind, at, () => `an adjustment of ${req.amount} would take the account below its limit`);
}

export async function setCreditLimit(db: Db, accountId: string, limit: number, at: Date) {
  const kind = await accountKind(db, accountId);
  if (kind === 'provider') throw new ApiError('validation', 'a provider account has no credit', [{ path: 'id', message: 'a provider account' }]);
  return db.transaction(async (tx) => {
    await ensureAccounts(tx, [ledgerId.client(accountId)]);
    try {
      await tx.update(ledgerAccounts).set({ creditLimit: toMicros(limit) }).where(eq(ledgerAccounts.id, ledgerId.client(accountId)));
    } catch (err) {
      if ((err as { cause?: { code?: string } })?.cause?.code === '23514') {
        throw new ApiError('conflict', 'the account already uses more than this limit would allow');
      }
      throw err;
    }
    void at;
    return balanceOf(tx, accountId, sidesOf(kind));
  });
}

const dayMs = 86_400_000;

function parseTime(v: string | undefined, name: string): Date | null {
  if (v === undefined) return null;
  const d = new Date(/^\d{4}-\d{2}-\d{2}$/.test(v) ? `${v}T00:00:00Z` : v);
  if (Number.isNaN(d.getTime())) throw new ApiError('validation', `${name} is not a time`, [{ path: `query.${name}`, message: 'an ISO time or a day like 2025-01-31' }]);
  return d;
}

/** The account's own lines in [since, until), oldest first: every transfer touching a side it may see. */
export async function statement(db: DbOrTx, accountId: string, may: { client: boolean; provider: boolean }, q: LedgerQuery, now: Date): Promise<Ledger> {
  const until = parseTime(q.until, 'until') ?? now;
  const since = parseTime(q.since, 'since') ?? new Date(until.getTime() - 30 * dayMs);
  if (since > until) throw new ApiError('validation', 'since is after until', [{ path: 'query.since', message: 'after until' }]);
  const sides = [may.client ? ledgerId.client(accountId) : null, may.provider ? ledgerId.provider(accountId) : null].filter((x): x is string => !!x);
  if (!sides.length) return { since: since.toISOString(), until: until.toISOString(), items: [] };
  const list = sides.join(',');
  const rows = await executeRows<{
    id: string;
    created_at: unknown;
    debit_account_id: string;
    credit_account_id: string;
    code: string;
    kind: LedgerLine['kind'];
    amount: unknown;
    reference: string | null;
    job_id: string | null;
    lease_id: string | null;
    node_id: string | null;
  }>(
    db,
    sql`select id, created_at, debit_account_id, credit_account_id, code, kind, amount, reference, job_id, lease_id, node_id
        from ledger_transfers
        where (debit_account_id = any(string_to_array(${list}, ',')) or credit_account_id = any(string_to_array(${list}, ',')))
          and created_at >= ${since.toISOString()}::timestamptz and created_at < ${until.toISOString()}::timestamptz
        order by created_at, id limit ${q.limit}`,
  );
  const items: LedgerLine[] = rows.map((r) => {
    const mine = sides.includes(r.credit_account_id) ? r.credit_account_id : r.debit_account_id;
    const sign = mine === r.credit_account_id ? 1 : -1;
    return {
      id: r.id,
      at: (r.created_at instanceof Date ? r.created_at : new Date(String(r.created_at))).toISOString(),
      role: mine.startsWith('client:') ? 'client' : 'provider',
      code: r.code,
      kind: r.kind,
      amount: fromMicros(sign * toNumber(r.amount)),
      reference: r.reference,
      jobId: r.job_id,
      leaseId: r.lease_id,
      nodeId: r.node_id,
    };
  });
  return { since: since.toISOString(), until: until.toISOString(), items };
}
