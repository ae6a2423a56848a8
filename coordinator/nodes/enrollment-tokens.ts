import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import { and, asc, eq, gt, isNull, type SQL } from 'drizzle-orm';
import { newId, randomLowercase } from '../../shared/ids.ts';
import type { CreateEnrollmentToken, EnrollmentToken, EnrollmentTokenInfo } from '../../shared/nodes.ts';
import type { DbOrTx, Tx } from '../db/open.ts';
import { enrollmentTokens } from '../db/schema/index.ts';
import { ApiError, notFound } from '../errors.ts';

type TokenRow = typeof enrollmentTokens.$inferSelect;
const toInfo = (r: TokenRow): EnrollmentTokenInfo => ({
  id: r.id,
  prefix: r.prefix,
  usesLeft: r.usesLeft,
  expiresAt: r.expiresAt.toISOString(),
  labels: r.labels,
  createdAt: r.createdAt.toISOString(),
  revokedAt: r.revokedAt?.toISOString() ?? null,
});

// A token reads gnt_<prefix>_<secret>: the prefix finds the row, the secret's hash proves it.
const tokenPattern = /^gnt_([0-9a-z]{12})_([A-Za-z0-9_-]{43})$/;
const sha256 = (s: string) => createHash('sha256').update(s).digest('hex');

/** Creates a token for the provider's account; the token itself is in this answer only. */
export async function createEnrollmentToken(
  db: DbOrTx,
  accountId: string,
  req: CreateEnrollmentToken,
  at: Date,
): Promise<EnrollmentToken> {
  const prefix = randomLowercase(12);
  const secret = randomBytes(32).toString('base64url');
  const [row] = await db
    .insert(enrollmentTokens)
    .values({
      id: newId('enrollmentToken', at.getTime()),
      accountId,
      prefix,
      hash: sha256(secret),
      labels: req.labels ?? {},
      usesLeft: req.uses,
      expiresAt: new Date(at.getTime() + req.expiresInSeconds * 1000),
      createdAt: at,
    })
    .returning();
  return {
    id: row!.id,
    token: `gnt_${prefix}_${secret}`,
    usesLeft: row!.usesLeft,
    expiresAt: row!.expiresAt.toISOString(),
    labels: row!.labels,
  };
}

/**
 * Spends one use of a token inside the registration's transaction, so a registration that
 * fails later gives the use back. Returns the account the node will belong to.
 */
export async function consumeEnrollmentToken(
  tx: Tx,
  token: string,
  at: Date,
): Promise<{ accountId: string; labels: Record<string, string>; tokenId: string }> {
  const m = token.match(tokenPattern);
  if (!m) throw new ApiError('unauthenticated', 'the enrollment token is not valid');
  const [, prefix, secret] = m;
  const [row] = await tx.select().from(enrollmentTokens).where(eq(enrollmentTokens.prefix, prefix!)).for('update');
  if (!row || !timingSafeEqual(Buffer.from(sha256(secret!), 'hex'), Buffer.from(row.hash, 'hex'))) {
    throw new ApiError('unauthenticated', 'the enrollment token is unknown');
  }
  if (row.revokedAt) throw new ApiError('unauthenticated', 'the enrollment token was revoked');
  if (row.expiresAt.getTime() <= at.getTime()) {
    throw new ApiError('unauthenticated', `the enrollment token expired at ${row.expiresAt.toISOString()}`);
  }
  if (row.usesLeft <= 0) throw new ApiError('unauthenticated', 'the enrollment token is used up');
  await tx
    .update(enrollmentTokens)
    .set({ usesLeft: row.usesLeft - 1 })
    .where(eq(enrollmentTokens.id, row.id));
  return { accountId: row.accountId, labels: row.labels, tokenId: row.id };
}

/** The account's enrollment tokens, oldest first, used up, expired and revoked ones included. */
export async function listEnrollmentTokens(
  db: DbOrTx,
  accountId: string,
  page: { limit: number; cursor?: string | undefined },
): Promise<{ items: EnrollmentTokenInfo[]; nextCursor: string | null }> {
  const where: SQL[] = [eq(enrollmentTokens.accountId, accountId)];
  if (page.cursor) where.push(gt(enrollmentTokens.id, page.cursor));
  const rows = await db
    .select()
    .from(enrollmentTokens)
    .where(and(...where))
    .orderBy(asc(enrollmentTokens.id))
    .limit(page.limit + 1);
  const items = rows.slice(0, page.limit);
  return { items: items.map(toInfo), nextCursor: rows.length > page.limit ? items[items.length - 1]!.id : null };
}

/** Revokes one of the account's tokens: no machine joins with it from now on (nodes that joined stay). */
export async function revokeEnrollmentToken(db: DbOrTx, accountId: string, tokenId: string, at: Date): Promise<EnrollmentTokenInfo> {
  const [updated] = await db
    .update(enrollmentTokens)
    .set({ revokedAt: at })
    .where(and(eq(enrollmentTokens.id, tokenId), eq(enrollmentTokens.accountId, accountId), isNull(enrollmentTokens.revokedAt)))
    .returning();
  if (updated) return toInfo(updated);
  const [row] = await db
    .select()
    .from(enrollmentTokens)
    .where(and(eq(enrollmentTokens.id, tokenId), eq(enrollmentTokens.accountId, accountId)));
  if (!row) throw notFound('enrollment token');
  return toInfo(row);
}
