import { sql } from 'drizzle-orm';
import { bigint, check, index, pgTable, text, uniqueIndex } from 'drizzle-orm/pg-core';
import { createdAt } from './columns.ts';

// The money ledger (TigerBeetle's model): accounts with debit and credit totals, pending and
// posted, moved only by immutable transfers in integer micro-units. A balance is credits less
// debits; over all accounts both the posted and the pending totals sum to zero.

export const ledgerAccounts = pgTable(
  'ledger_accounts',
  {
    // `client:acct_…`, `provider:acct_…`, `platform:fees`, `platform:bank` (money in and out of Gantry).
    id: text('id').primaryKey(),
    accountId: text('account_id'),
    role: text('role', { enum: ['client', 'provider', 'fees', 'bank'] }).notNull(),
    debitsPending: bigint('debits_pending', { mode: 'number' }).notNull().default(0),
    debitsPosted: bigint('debits_posted', { mode: 'number' }).notNull().default(0),
    creditsPending: bigint('credits_pending', { mode: 'number' }).notNull().default(0),
    creditsPosted: bigint('credits_posted', { mode: 'number' }).notNull().default(0),
    // How far below zero a client may go (an admin sets it); 0: prepaid only.
    creditLimit: bigint('credit_limit', { mode: 'number' }).notNull().default(0),
    createdAt: createdAt(),
  },
  (t) => [
    check('ledger_accounts_role', sql`${t.role} in ('client', 'provider', 'fees', 'bank')`),
    // The last line against overdraft, as allocated <= capacity is against over-allocation.
    check(
      'ledger_accounts_no_overdraft',
      sql`${t.role} not in ('client', 'provider') or ${t.debitsPosted} + ${t.debitsPending} <= ${t.creditsPosted} + ${t.creditLimit}`,
    ),
    check('ledger_accounts_limit', sql`${t.creditLimit} >= 0`),
    index('ledger_accounts_account').on(t.accountId),
  ],
);

export const ledgerTransfers = pgTable(
  'ledger_transfers',
  {
    // The idempotency id: the same movement asked twice is one transfer.
    id: text('id').primaryKey(),
    // Ledger account ids; every transfer makes its accounts first (coordinator/ledger/ledger.ts
    // ensureAccounts), so no foreign key: a placement batch writes a thousand transfers at once.
    debitAccountId: text('debit_account_id').notNull(),
    creditAccountId: text('credit_account_id').notNull(),
    amount: bigint('amount', { mode: 'number' }).notNull(),
    // posted: moves at once; pending: a hold; post / void: resolve one pending transfer (pending_id).
    kind: text('kind', { enum: ['posted', 'pending', 'post', 'void'] }).notNull(),
    pendingId: text('pending_id'),
    // deposit, payout, adjustment, hold, usage, fee
    code: text('code').notNull(),
    reference: text('reference'),
    jobId: text('job_id'),
    leaseId: text('lease_id'),
    nodeId: text('node_id'),
    createdAt: createdAt(),
  },
  (t) => [
    check('ledger_transfers_kind', sql`${t.kind} in ('posted', 'pending', 'post', 'void')`),
    check('ledger_transfers_amount', sql`${t.amount} >= 0 and (${t.amount} > 0 or ${t.kind} in ('post', 'void'))`),
    check('ledger_transfers_pending', sql`(${t.pendingId} is not null) = (${t.kind} in ('post', 'void'))`),
    // Every hold is resolved at most once, by a post or by a void.
    uniqueIndex('ledger_transfers_resolves')
      .on(t.pendingId)
      .where(sql`${t.pendingId} is not null`),
    index('ledger_transfers_debit').on(t.debitAccountId, t.createdAt),
    index('ledger_transfers_credit').on(t.creditAccountId, t.createdAt),
  ],
);
