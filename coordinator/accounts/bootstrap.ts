import { eq } from 'drizzle-orm';
import { insertKey } from '../auth/api-keys.ts';
import type { Database } from '../db/open.ts';
import { lockKeys } from '../db/migrate.ts';
import { accounts } from '../db/schema/index.ts';
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

/** Recovery for a lost admin key: a fresh admin key, printed on the coordinator's host. */
export async function issueAdminKey(database: Database): Promise<string> {
  const created = await bootstrapAdmin(database);
  if (created) return created;
  const [admin] = await database.db.select().from(accounts).where(eq(accounts.isAdmin, true)).limit(1);
  const { key } = await insertKey(database.db, admin!.id, adminScopes, 'recovered');
  return key;
}
