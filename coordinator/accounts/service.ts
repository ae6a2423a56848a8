import { and, asc, eq, gt, inArray, isNull, type SQL } from 'drizzle-orm';
import type { AccountKind, Scope } from '../../shared/accounts.ts';
import { newId } from '../../shared/ids.ts';
import { insertKey } from '../auth/api-keys.ts';
import type { Db, DbOrTx } from '../db/open.ts';
import { accounts, apiKeys } from '../db/schema/index.ts';
import { ApiError, notFound } from '../errors.ts';

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

type Actor = { accountId: string; keyId: string; scopes: Scope[] };

/** The account, when the actor may manage its keys (admin, or the account itself); another tenant's is not found. */
async function manageableAccount(db: Db, actor: Actor, accountId: string): Promise<AccountRow> {
  if (!actor.scopes.includes('admin') && actor.accountId !== accountId) throw notFound('account');
  const [account] = await db.select().from(accounts).where(eq(accounts.id, accountId));
  if (!account) throw notFound('account');
  return account;
}

export async function createKey(
  db: Db,
  actor: Actor,
  accountId: string,
  req: { scopes: Scope[]; name: string | null; expiresInSeconds?: number | undefined },
  at: Date,
): Promise<{ key: string; row: ApiKeyRow }> {
  const { scopes, name } = req;
  const isAdmin = actor.scopes.includes('admin');
  const account = await manageableAccount(db, actor, accountId);
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
  const expiresAt = req.expiresInSeconds === undefined ? null : new Date(at.getTime() + req.expiresInSeconds * 1000);
  return insertKey(db, accountId, wanted, name, { byKeyId: actor.keyId, expiresAt });
}

/** An account's keys, oldest first, revoked and expired ones included. */
export async function listKeys(db: Db, actor: Actor, accountId: string, page: { limit: number; cursor?: string | undefined }) {
  await manageableAccount(db, actor, accountId);
  const where: SQL[] = [eq(apiKeys.accountId, accountId)];
  if (page.cursor) where.push(gt(apiKeys.id, page.cursor));
  const rows = await db
    .select()
    .from(apiKeys)
    .where(and(...where))
    .orderBy(asc(apiKeys.id))
    .limit(page.limit + 1);
  const items = rows.slice(0, page.limit);
  return { items, nextCursor: rows.length > page.limit ? items[items.length - 1]!.id : null };
}

/**
 * Revokes a key; with cascade, also every key it made, and theirs, down the line (a key made by
 * a revoked key is found through it too). Returns the key and the others this revoked.
 */
export async function revokeKey(db: Db, actor: Actor, keyId: string, at: Date, cascade: boolean) {
  return db.transaction(async (tx) => {
    const [row] = await tx.select().from(apiKeys).where(eq(apiKeys.id, keyId));
    if (!row || (!actor.scopes.includes('admin') && row.accountId !== actor.accountId)) throw notFound('key');
    const [updated] = await tx
      .update(apiKeys)
      .set({ revokedAt: at })
      .where(and(eq(apiKeys.id, keyId), isNull(apiKeys.revokedAt)))
      .returning();
    const cascaded: ApiKeyRow[] = [];
    const seen = new Set([keyId]);
    for (let parents = cascade ? [keyId] : []; parents.length; ) {
      const children = await tx.select({ id: apiKeys.id }).from(apiKeys).where(inArray(apiKeys.createdByKeyId, parents));
      parents = children.map((c) => c.id).filter((id) => !seen.has(id));
      parents.forEach((id) => seen.add(id));
      if (!parents.length) break;
      cascaded.push(
        ...(await tx
          .update(apiKeys)
          .set({ revokedAt: at })
          .where(and(inArray(apiKeys.id, parents), isNull(apiKeys.revokedAt)))
          .returning()),
      );
    }
    return { row: updated ?? row, cascaded };
  });
}

