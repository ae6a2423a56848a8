import { z } from 'zod';
import { hasMicroPrecision } from './money.ts';

// The ledger as the API shows it: amounts are decimal currency units (like prices), kept as
// integer micro-units inside (shared/money.ts).

const Amount = z
  .number()
  .positive('must be more than 0')
  .max(1_000_000_000)
  .refine(hasMicroPrecision, 'at most 6 decimals');
const Reference = z.string().min(1).max(200);

/** POST /v1/accounts/{id}/credits (admin): the same reference twice counts once. */
export const Deposit = z.object({ amount: Amount, reference: Reference }).strict();
export type Deposit = z.infer<typeof Deposit>;

/** POST /v1/accounts/{id}/payouts (admin): never above what the provider is owed. */
export const Payout = z.object({ amount: Amount, reference: Reference }).strict();
export type Payout = z.infer<typeof Payout>;

/**
 * POST /v1/accounts/{id}/adjustments (admin): a compensating transfer, never an edit. A positive
 * amount credits the account, a negative one debits it; `role` picks its client or provider side.
 */
export const Adjustment = z
  .object({
    amount: z
      .number()
      .refine((v) => v !== 0, 'must not be 0')
      .refine((v) => Math.abs(v) <= 1_000_000_000, 'at most 1,000,000,000')
      .refine(hasMicroPrecision, 'at most 6 decimals'),
    reason: z.string().min(1).max(500),
    reference: Reference,
    role: z.enum(['client', 'provider']).optional(),
  })
  .strict();
export type Adjustment = z.infer<typeof Adjustment>;

/** PUT /v1/accounts/{id}/credit-limit (admin): how far below zero the client may go. */
export const CreditLimit = z.object({ limit: z.number().min(0).max(1_000_000_000).refine(hasMicroPrecision, 'at most 6 decimals') }).strict();

export const ClientBalance = z.object({ balance: z.number(), held: z.number(), available: z.number(), creditLimit: z.number() });
export const ProviderBalance = z.object({ earned: z.number(), paidOut: z.number(), payable: z.number() });

/** GET /v1/balance: each side the key may see; a side it may not is null. */
export const Balance = z.object({
  accountId: z.string(),
  client: ClientBalance.nullable(),
  provider: ProviderBalance.nullable(),
});
export type Balance = z.infer<typeof Balance>;

export const TransferResult = z.object({ transferId: z.string(), replayed: z.boolean(), balance: Balance });
export type TransferResult = z.infer<typeof TransferResult>;

export const LedgerQuery = z.object({
  /** ISO time or day; default 30 days back. */
  since: z.string().max(40).optional(),
  /** ISO time or day (exclusive); default now. */
  until: z.string().max(40).optional(),
  limit: z.coerce.number().int().min(1).max(1000).default(200),
});
export type LedgerQuery = z.infer<typeof LedgerQuery>;

export const LedgerLine = z.object({
  id: z.string(),
  at: z.string(),
  /** Which side of the account it touches. */
  role: z.enum(['client', 'provider']),
  /** deposit, payout, adjustment, hold, usage, fee. */
  code: z.string(),
  kind: z.enum(['posted', 'pending', 'post', 'void']),
  /** Signed: what it adds to (or takes from) the account's balance once posted. */
  amount: z.number(),
  reference: z.string().nullable(),
  jobId: z.string().nullable(),
  leaseId: z.string().nullable(),
  nodeId: z.string().nullable(),
});
export type LedgerLine = z.infer<typeof LedgerLine>;

export const Ledger = z.object({ since: z.string(), until: z.string(), items: z.array(LedgerLine) });
export type Ledger = z.infer<typeof Ledger>;
