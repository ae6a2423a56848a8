import { and, eq, isNull } from 'drizzle-orm';
import type { AccountKind, Scope } from '../../shared/accounts.ts';
import { newId } from '../../shared/ids.ts';
import { insertKey } from '../auth/api-keys.ts';
import type { Db, DbOrTx } from '../db/open.ts';
import { accounts, apiKeys } from '../db/schema/index.ts';
import { ApiError, notFound } from '../http/problem.ts';

export type AccountRow = typeof accounts.$inferSelect;
export type ApiKeyRow = typeof apiKeys.$inferSelect;

export const adminScopes: Scope[] = ['admin', 'client', 'provider'];

export async function createAccount(db: DbOrTx, name: string, kind: AccountKind, isAdmin = false): Promise<AccountRow> {
  const [row] = await db.insert(accounts).values({ id: newId('account'), name, kind, isAdmin }).returning();
  return row!;
}

/** Scopes an account of this kind may ever hold (admin only by the bootstrap). */
function scopesAllowedFor(kind: AccountKind): Scope[] {
  return kind === 'both' ? ['client', 'provider'] : [kind];
}

export async function createKey(
  db: Db,
  actor: { accountId: string; scopes: Scope[] },
  accountId: string,
  scopes: Scope[],
  name: string | null,
): Promise<{ key: string; row: ApiKeyRow }> {
  const isAdmin = actor.scopes.includes('admin');
  // Another tenant's account looks the same as a missing one.
  if (!isAdmin && actor.accountId !== accountId) throw notFound('account');
  const [account] = await db.select().from(accounts).where(eq(accounts.id, accountId));
  if (!account) throw notFound('account');
  const wanted = [...new Set(scopes)];
  if (!isAdmin) {
    const missing = wanted.filter((s) => !actor.scopes.includes(s));
    if (missing.length) throw new ApiError('forbidden', `a key can only grant scopes it holds itself; missing: ${missing.join(', ')}`);
  } else if (wanted.includes('admin') && !account.isAdmin) {
    throw new ApiError('forbidden', 'the admin scope belongs to the admin account alone');
  }
  const allowed = account.isAdmin ? adminScopes : scopesAllowedFor(account.kind);
  const refused = wanted.filter((s) => !allowed.includes(s));
  if (refused.length) {
    throw new ApiError('validation', `a ${account.kind} account cannot hold the ${refused.join(', ')} scope`, [
      { path: 'scopes', message: `not allowed for a ${account.kind} account: ${refused.join(', ')}` },
    ]);
  }
  return insertKey(db, accountId, wanted, name);
}

export async function revokeKey(db: Db, actor: { accountId: string; scopes: Scope[] }, keyId: string, at: Date) {
  const [row] = await db.select().from(apiKeys).where(eq(apiKeys.id, keyId));
  if (!row || (!actor.scopes.includes('admin') && row.accountId !== actor.accountId)) throw notFound('key');
  const [updated] = await db
    .update(apiKeys)
    .set({ revokedAt: at })
    .where(and(eq(apiKeys.id, keyId), isNull(apiKeys.revokedAt)))
    .returning();
  return updated ?? row;
}

