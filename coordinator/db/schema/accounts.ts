import { boolean, check, index, jsonb, pgTable, text, uniqueIndex } from 'drizzle-orm/pg-core';
import { sql } from 'drizzle-orm';
import { at, createdAt } from './columns.ts';

export const accounts = pgTable(
  'accounts',
  {
    id: text('id').primaryKey(),
    name: text('name').notNull(),
    kind: text('kind', { enum: ['client', 'provider', 'both'] }).notNull(),
    // The one account made at first start, whose keys may hold the admin scope.
    isAdmin: boolean('is_admin').notNull().default(false),
    createdAt: createdAt(),
  },
  (t) => [check('accounts_kind', sql`${t.kind} in ('client', 'provider', 'both')`)],
);

export const apiKeys = pgTable(
  'api_keys',
  {
    id: text('id').primaryKey(),
    accountId: text('account_id')
      .notNull()
      .references(() => accounts.id),
    name: text('name'),
    // The key's public look-up part; the secret part is kept only as a sha256 hash.
    prefix: text('prefix').notNull(),
    hash: text('hash').notNull(),
    scopes: jsonb('scopes').$type<string[]>().notNull(),
    createdAt: createdAt(),
    lastUsedAt: at('last_used_at'),
    revokedAt: at('revoked_at'),
    // Past this instant the key is refused like a revoked one; null: it does not expire.
    expiresAt: at('expires_at'),
    // The key that made this one (null: the bootstrap), so a revocation can take its offspring too.
    createdByKeyId: text('created_by_key_id'),
  },
  (t) => [
    uniqueIndex('api_keys_prefix').on(t.prefix),
    index('api_keys_account').on(t.accountId),
    index('api_keys_created_by').on(t.createdByKeyId),
  ],
);
