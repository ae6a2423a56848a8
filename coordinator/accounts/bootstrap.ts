import { and, eq, isNull, ne } from 'drizzle-orm';
import { insertKey } from '../auth/api-keys.ts';
import type { Database } from '../db/open.ts';
import { lockKeys } from '../db/migrate.ts';
import { accounts, apiKeys } from '../db/schema/index.ts';
import { adminScopes, createAccount } from './service.ts';

/**
 * On the first start, creates the admin account and returns its key, once. Under an advisory
 * lock so two coordinators starting together create one admin, not two.
 */
export async function bootstrapAdmin(database: Database): Promise<string | null> {
  return database.withAdvisoryLock(lockKeys.bootstrap, async () => {
    const [existing] = await database.db.select().from(accounts).where(eq(accounts.isAdmin, true)).limit(1);
    if (existing) return null;
    return database.db.transaction(async (tx) => {
      const account = await createAccount(tx, 'admin', 'both', true);
      const { key } = await insertKey(tx, account.id, adminScopes, 'bootstrap');
      return key;
    });
  });
}

/**
 * Recovery for a lost admin key: a fresh admin key, printed on the coordinator's host. With
 * revokeOthers, every other key of the admin account is revoked in the same transaction (a lost
 * key may be in someone else's hands); their ids are returned so that replicas can be told.
 */
export async function issueAdminKey(
  database: Database,
  opts: { revokeOthers?: boolean; at?: Date } = {},
): Promise<{ key: string; revokedKeyIds: string[] }> {
  const created = await bootstrapAdmin(database);
  if (created) return { key: created, revokedKeyIds: [] };
  return database.db.transaction(async (tx) => {
    const [admin] = await tx.select().from(accounts).where(eq(accounts.isAdmin, true)).limit(1);
    const { key, row } = await insertKey(tx, admin!.id, adminScopes, 'recovered');
    if (!opts.revokeOthers) return { key, revokedKeyIds: [] };
    const revoked = await tx
      .update(apiKeys)
      .set({ revokedAt: opts.at ?? new Date() })
      .where(and(eq(apiKeys.accountId, admin!.id), isNull(apiKeys.revokedAt), ne(apiKeys.id, row.id)))
      .returning({ id: apiKeys.id });
    return { key, revokedKeyIds: revoked.map((r) => r.id) };
  });
}
