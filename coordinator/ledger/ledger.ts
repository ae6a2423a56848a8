import { sql } from 'drizzle-orm';
import type { DbOrTx } from '../db/open.ts';
import { toNumber } from '../db/open.ts';
import { ledgerAccounts, ledgerTransfers } from '../db/schema/index.ts';
import { ApiError } from '../errors.ts';

// The double-entry core: every movement is an immutable transfer between two ledger accounts,
// posted at once or pending (a hold) until one post or one void resolves it. Balances change in
// the transfer's own transaction, with the accounts locked in id order (every caller has locked
// its nodes and jobs before: nodes, jobs, then ledger accounts). Integers only: micro-units.

export type Role = 'client' | 'provider' | 'fees' | 'bank';

export const ledgerId = {
  client: (accountId: string) => `client:${accountId}`,
  provider: (accountId: string) => `provider:${accountId}`,
  fees: 'platform:fees',
  /** Where deposits come from and payouts go: money outside Gantry. Its balance is minus what is inside. */
  bank: 'platform:bank',
} as const;

function roleOf(id: string): { role: Role; accountId: string | null } {
  if (id === ledgerId.fees) return { role: 'fees', accountId: null };
  if (id === ledgerId.bank) return { role: 'bank', accountId: null };
  const [role, accountId] = id.split(':') as [Role, string];
  return { role, accountId };
}

/** A transfer that moves money now, or holds it (pending). */
export interface NewTransfer {
  id: string;
  kind: 'posted' | 'pending';
  debit: string;
  credit: string;
  amount: number;
  code: string;
  reference?: string | null;
  jobId?: string | null;
  leaseId?: string | null;
  nodeId?: string | null;
}

/** Resolves a pending transfer: post `amount` of it (at most what it holds; the rest is released), or void it. */
export interface Resolution {
  id: string;
  kind: 'post' | 'void';
  pendingId: string;
  /** For a post. */
  amount?: number;
  code: string;
}

export type TransferInput = NewTransfer | Resolution;

const isResolution = (t: TransferInput): t is Resolution => t.kind === 'post' || t.kind === 'void';

export interface AccountRow {
  id: string;
  role: Role;
  debitsPending: number;
  debitsPosted: number;
  creditsPending: number;
  creditsPosted: number;
  creditLimit: number;
}

/** What a client or provider may still spend or have held: credits + limit - debits (posted and pending). */
export const availableOf = (a: AccountRow) => a.creditsPosted + a.creditLimit - a.debitsPosted - a.debitsPending;

/** A transfer that would take an account below its limit, or resolve a hold twice. */
export class LedgerRefused extends Error {
  constructor(
    message: string,
    readonly accountId?: string,
  ) {
    super(message);
  }
}

type AccountDbRow = {
  id: string;
  role: Role;
  debits_pending: unknown;
  debits_posted: unknown;
  credits_pending: unknown;
  credits_posted: unknown;
  credit_limit: unknown;
};

const toAccount = (r: AccountDbRow): AccountRow => ({
  id: r.id,
  role: r.role,
  debitsPending: toNumber(r.debits_pending),
  debitsPosted: toNumber(r.debits_posted),
  creditsPending: toNumber(r.credits_pending),
  creditsPosted: toNumber(r.credits_posted),
  creditLimit: toNumber(r.credit_limit),
});

const json = (rows: unknown[]) => sql`${JSON.stringify(rows)}::jsonb`;
const ts = (d: Date) => sql`${d.toISOString()}::timestamptz`;

/** Rows of a raw query on either driver (postgres.js: an array; PGlite: { rows }). */
export async function executeRows<T>(tx: DbOrTx, query: ReturnType<typeof sql>): Promise<T[]> {
  const result = (await tx.execute(query)) as unknown as T[] | { rows: T[] };
  return Array.isArray(result) ? [...result] : result.rows;
}

/** Makes the ledger accounts that do not exist yet (an account's side is made on its first use). */
export async function ensureAccounts(tx: DbOrTx, ids: readonly string[]): Promise<void> {
  const rows = [...new Set(ids)].map((id) => ({ id, ...roleOf(id) }));
  if (!rows.length) return;
  await tx.execute(sql`insert into ${ledgerAccounts} (id, account_id, role)
    select v.id, v."accountId", v.role from jsonb_to_recordset(${json(rows)}) as v(id text, "accountId" text, role text)
    on conflict (id) do nothing`);
}

/** Reads accounts without locking them (balances, the planner's view of credit). */
export async function readAccounts(tx: DbOrTx, ids: readonly string[]): Promise<Map<string, AccountRow>> {
  if (!ids.length) return new Map();
  const rows = await executeRows<AccountDbRow>(
    tx,
    sql`select id, role, debits_pending, debits_posted, credits_pending, credits_posted, credit_limit
        from ${ledgerAccounts} where id = any(string_to_array(${[...new Set(ids)].join(',')}, ','))`,
  );
  return new Map(rows.map((r) => [r.id, toAccount(r)]));
}

/** Locks accounts in id order (the one order every transaction takes them in: no deadlock). */
export async function lockAccounts(tx: DbOrTx, ids: readonly string[]): Promise<Map<string, AccountRow>> {
  const sorted = [...new Set(ids)].sort();
  const rows = await executeRows<AccountDbRow>(
    tx,
    sql`select id, role, debits_pending, debits_posted, credits_pending, credits_posted, credit_limit
        from ${ledgerAccounts} where id = any(string_to_array(${sorted.join(',')}, ',')) order by id for update`,
  );
  return new Map(rows.map((r) => [r.id, toAccount(r)]));
}

type PendingRow = { id: string; debit_account_id: string; credit_account_id: string; amount: unknown; kind: string; job_id: string | null; lease_id: string | null; node_id: string | null };

/**
 * Applies transfers in the caller's transaction, all or none: a transfer whose id is already
 * there is a replay and changes nothing (returned in `replayed`). Throws LedgerRefused when one
 * would take a client or provider below its limit or resolve a hold already resolved.
 */
export async function applyTransfers(tx: DbOrTx, transfers: readonly TransferInput[], at: Date): Promise<{ applied: Set<string>; replayed: Set<string> }> {
  const applied = new Set<string>();
  const replayed = new Set<string>();
  if (!transfers.length) return { applied, replayed };
  const resolutions = transfers.filter((t): t is Resolution => t.kind === 'post' || t.kind === 'void');
  const pending = new Map<string, PendingRow>();
  if (resolutions.length) {
    const found = await executeRows<PendingRow>(
      tx,
      sql`select id, debit_account_id, credit_account_id, amount, kind, job_id, lease_id, node_id from ${ledgerTransfers}
          where id = any(string_to_array(${resolutions.map((r) => r.pendingId).join(',')}, ','))`,
    );
    for (const p of found) pending.set(p.id, p);
  }
  const legs = transfers.map((t) => {
    if (!isResolution(t)) return { t, debit: t.debit, credit: t.credit };
    const p = pending.get(t.pendingId);
    if (!p || p.kind !== 'pending') throw new LedgerRefused(`no pending transfer ${t.pendingId}`);
    return { t, debit: p.debit_account_id, credit: p.credit_account_id, p };
  });
  const accountIds = legs.flatMap((l) => [l.debit, l.credit]);
  await ensureAccounts(tx, accountIds);
  const accounts = await lockAccounts(tx, accountIds);

  // Insert first: a replay (the id is there) is told by the insert itself, under the locks.
  const rows = legs.map(({ t, debit, credit, p }) => {
    const amount: number = t.kind === 'void' ? 0 : (t.amount ?? 0);
    return {
      id: t.id,
      d: debit,
      c: credit,
      a: amount,
      k: t.kind,
      pid: isResolution(t) ? t.pendingId : null,
      code: t.code,
      ref: isResolution(t) ? null : (t.reference ?? null),
      j: isResolution(t) ? (p?.job_id ?? null) : (t.jobId ?? null),
      l: isResolution(t) ? (p?.lease_id ?? null) : (t.leaseId ?? null),
      n: isResolution(t) ? (p?.node_id ?? null) : (t.nodeId ?? null),
    };
  });
  for (const r of rows) {
    if (!Number.isSafeInteger(r.a) || r.a < 0) throw new LedgerRefused(`transfer ${r.id}: the amount must be a whole number of micro-units`);
  }
  let inserted: { id: string }[];
  try {
    inserted = await executeRows<{ id: string }>(
      tx,
      sql`insert into ${ledgerTransfers} (id, debit_account_id, credit_account_id, amount, kind, pending_id, code, reference, job_id, lease_id, node_id, created_at)
          select v.id, v.d, v.c, v.a, v.k, v.pid, v.code, v.ref, v.j, v.l, v.n, ${ts(at)}
          from jsonb_to_recordset(${json(rows)}) as v(id text, d text, c text, a bigint, k text, pid text, code text, ref text, j text, l text, n text)
          on conflict (id) do nothing returning id`,
    );
  } catch (err) {
    // The unique index on pending_id: another transfer resolved this hold first.
    if ((err as { cause?: { code?: string } })?.cause?.code === '23505') throw new LedgerRefused('a hold was already resolved');
    throw err;
  }
  const fresh = new Set(inserted.map((r) => r.id));
  const delta = new Map<string, { dp: number; dP: number; cp: number; cP: number }>();
  const bump = (id: string, k: 'dp' | 'dP' | 'cp' | 'cP', v: number) => {
    const d = delta.get(id) ?? { dp: 0, dP: 0, cp: 0, cP: 0 };
    d[k] += v;
    delta.set(id, d);
  };
  for (const [i, leg] of legs.entries()) {
    const r = rows[i]!;
    if (!fresh.has(r.id)) {
      replayed.add(r.id);
      continue;
    }
    applied.add(r.id);
    if (leg.t.kind === 'posted') {
      bump(leg.debit, 'dP', r.a);
      bump(leg.credit, 'cP', r.a);
    } else if (leg.t.kind === 'pending') {
      bump(leg.debit, 'dp', r.a);
      bump(leg.credit, 'cp', r.a);
    } else {
      const held = toNumber(leg.p!.amount);
      if (r.a > held) throw new LedgerRefused(`transfer ${r.id} posts ${r.a}, more than the ${held} its hold holds`);
      bump(leg.debit, 'dp', -held);
      bump(leg.credit, 'cp', -held);
      bump(leg.debit, 'dP', r.a);
      bump(leg.credit, 'cP', r.a);
    }
  }
  if (!delta.size) return { applied, replayed };
  for (const [id, d] of delta) {
    const a = accounts.get(id)!;
    const after = { ...a, debitsPending: a.debitsPending + d.dp, debitsPosted: a.debitsPosted + d.dP, creditsPending: a.creditsPending + d.cp, creditsPosted: a.creditsPosted + d.cP };
    if ((a.role === 'client' || a.role === 'provider') && availableOf(after) < 0 && (d.dp > 0 || d.dP > 0)) {
      throw new LedgerRefused(`${id} has ${availableOf(a)} micro-units available, short of what this takes`, id);
    }
  }
  const updates = [...delta].map(([id, d]) => ({ id, ...d }));
  await tx.execute(sql`update ${ledgerAccounts} set
      debits_pending = ${ledgerAccounts}.debits_pending + v.dp, debits_posted = ${ledgerAccounts}.debits_posted + v."dP",
      credits_pending = ${ledgerAccounts}.credits_pending + v.cp, credits_posted = ${ledgerAccounts}.credits_posted + v."cP"
    from jsonb_to_recordset(${json(updates)}) as v(id text, dp bigint, "dP" bigint, cp bigint, "cP" bigint)
    where ${ledgerAccounts}.id = v.id`);
  return { applied, replayed };
}

/** What an existing transfer with this id moved (to tell a replay from a different request under the same reference). */
export async function findTransfer(tx: DbOrTx, id: string) {
  const [row] = await tx.select().from(ledgerTransfers).where(sql`${ledgerTransfers.id} = ${id}`);
  return row ?? null;
}

/** Turns a refusal into the API's error (409 with what is short). */
export function refusedToApi(err: unknown, detail: (e: LedgerRefused) => string): never {
  if (err instanceof LedgerRefused) throw new ApiError('conflict', detail(err));
  throw err;
}
