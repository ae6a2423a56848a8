import { jsonb, pgTable, text } from 'drizzle-orm/pg-core';
import { at, createdAt } from './columns.ts';

export const signingKeys = pgTable('signing_keys', {
  kid: text('kid').primaryKey(),
  // The private JWK; null when the key lives in a file named by config.
  privateJwk: jsonb('private_jwk').$type<Record<string, string>>(),
  publicJwk: jsonb('public_jwk').$type<Record<string, string>>().notNull(),
  createdAt: createdAt(),
  retiredAt: at('retired_at'),
});
