import { jsonb, pgTable } from 'drizzle-orm/pg-core';
import type { PoolHistoryPoint } from '../../../shared/pool.ts';
import { at } from './columns.ts';

// The pool's counts kept at a fixed step (one row per step, the step's start as key),
// written by one coordinator at a time and pruned by age (coordinator/pool/history.ts).
export const poolHistory = pgTable('pool_history', {
  at: at('at').primaryKey(),
  sample: jsonb('sample').$type<Omit<PoolHistoryPoint, 'at'>>().notNull(),
});
