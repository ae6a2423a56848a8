import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import { and, asc, eq, isNull } from 'drizzle-orm';
import { newId, randomLowercase } from '../../shared/ids.ts';
import type { ServiceTokenInfo } from '../../shared/services.ts';
import type { Clock } from '../clock.ts';
import type { Database, Db } from '../db/open.ts';
import { serviceTokens } from '../db/schema/index.ts';
import { ApiError, notFound } from '../errors.ts';
import { getOwnJob } from '../jobs/lifecycle.ts';
import { serviceOf } from '../jobs/arrays.ts';

// Service tokens: a job's owner hands one to its app's users so that they can call the service
// without the owner's API key. gst_<prefix>_<secret>: the prefix finds the row, the secret's hash proves it.

export type ServiceTokenRow = typeof serviceTokens.$inferSelect;

const tokenPattern = /^gst_([0-9a-z]{12})_([A-Za-z0-9_-]{43})$/;
const sha256 = (s: string) => createHash('sha256').update(s).digest('hex');
/** The NOTIFY channel on which a revoked service token's id travels to every replica. */
export const serviceTokenRevokedChannel = 'gantry_service_token_revoked';
/** How long a verified token is trusted without asking the database again (a revocation clears it at once). */
const verifiedCacheMs = 5_000;
const maxCachedTokens = 10_000;

export const isServiceToken = (s: string) => s.startsWith('gst_');

export const toServiceTokenInfo = (r: ServiceTokenRow): ServiceTokenInfo => ({
  id: r.id,
  jobId: r.jobId,
  name: r.name,
  prefix: r.prefix,
  createdAt: r.createdAt.toISOString(),
  expiresAt: r.expiresAt?.toISOString() ?? null,
  revokedAt: r.revokedAt?.toISOString() ?? null,
});

export async function createServiceToken(
  db: Db,
  accountId: string,
  jobId: string,
  body: { name: string; expiresInSeconds?: number | undefined },
  at: Date,
): Promise<{ token: string; row: ServiceTokenRow }> {
  const job = await getOwnJob(db, accountId, jobId);
  if (!serviceOf(job.spec)) throw new ApiError('conflict', 'this job is not a service (its spec has no service)');
  const prefix = randomLowercase(12);
  const secret = randomBytes(32).toString('base64url');
  const [row] = await db
    .insert(serviceTokens)
    .values({
      id: newId('serviceToken'),
      jobId,
      accountId,
      name: body.name,
      prefix,
      hash: sha256(secret),
      expiresAt: body.expiresInSeconds ? new Date(at.getTime() + body.expiresInSeconds * 1000) : null,
    })
    .returning();
  return { token: `gst_${prefix}_${secret}`, row: row! };
}

/** A job's tokens, oldest first, revoked and expired ones included. */
export async function listServiceTokens(db: Db, accountId: string, jobId: string): Promise<ServiceTokenRow[]> {
  await getOwnJob(db, accountId, jobId);
  return db.select().from(serviceTokens).where(eq(serviceTokens.jobId, jobId)).orderBy(asc(serviceTokens.id));
}

export async function revokeServiceToken(db: Db, accountId: string, jobId: string, tokenId: string, at: Date): Promise<ServiceTokenRow> {
  await getOwnJob(db, accountId, jobId);
  const [updated] = await db
    .update(serviceTokens)
    .set({ revokedAt: at })
    .where(and(eq(serviceTokens.id, tokenId), eq(serviceTokens.jobId, jobId), isNull(serviceTokens.revokedAt)))
    .returning();
  if (updated) return updated;
  const [row] = await db.select().from(serviceTokens).where(and(eq(serviceTokens.id, tokenId), eq(serviceTokens.jobId, jobId)));
  if (!row) throw notFound('service token');
  return row;
}

interface Verified {
  tokenId: string;
  jobId: string;
  hash: Buffer;
  until: number;
}

/** Checks service tokens, from a short cache; revocations reach every replica through NOTIFY. */
export class ServiceTokenVerifier {
  private verified = new Map<string, Verified>();
  private listeners = new Set<(tokenId: string) => void>();

  constructor(
    private database: Database,
    private clock: Clock,
  ) {}

  async listenForRevocations(): Promise<() => Promise<void>> {
    return this.database.listen(serviceTokenRevokedChannel, (id) => this.forget(id));
  }

  /** The token's id when it is a live token of this job; throws 401 otherwise. */
  async verify(token: string, jobId: string): Promise<string> {
    const m = tokenPattern.exec(token);
    if (!m) throw new ApiError('unauthenticated', 'the service token is not valid');
    const [, prefix, secret] = m;
    const given = Buffer.from(sha256(secret!), 'hex');
    const now = performance.now();
    let entry = this.verified.get(prefix!);
    if (!entry || entry.until <= now) {
      const at = this.clock.now();
      const [row] = await this.database.db.select().from(serviceTokens).where(eq(serviceTokens.prefix, prefix!)).limit(1);
      if (!row || !timingSafeEqual(given, Buffer.from(row.hash, 'hex'))) {
        this.verified.delete(prefix!);
        throw new ApiError('unauthenticated', 'the service token is not valid');
      }
      if (row.revokedAt) {
        this.verified.delete(prefix!);
        throw new ApiError('unauthenticated', 'the service token was revoked');
      }
      if (row.expiresAt && row.expiresAt.getTime() <= at.getTime()) {
        this.verified.delete(prefix!);
        throw new ApiError('unauthenticated', `the service token expired at ${row.expiresAt.toISOString()}`);
      }
      const lifeLeftMs = row.expiresAt ? row.expiresAt.getTime() - at.getTime() : Infinity;
      entry = { tokenId: row.id, jobId: row.jobId, hash: Buffer.from(row.hash, 'hex'), until: now + Math.min(verifiedCacheMs, lifeLeftMs) };
      if (this.verified.size >= maxCachedTokens) this.verified.delete(this.verified.keys().next().value!);
      this.verified.set(prefix!, entry);
    }
    if (!timingSafeEqual(given, entry.hash)) throw new ApiError('unauthenticated', 'the service token is not valid');
    // Another job's token opens nothing here, and says nothing about that job.
    if (entry.jobId !== jobId) throw new ApiError('unauthenticated', 'the service token is not valid for this service');
    return entry.tokenId;
  }

  /** After a revocation: this replica forgets the token now, the others when the NOTIFY reaches them. */
  async revoked(tokenId: string): Promise<void> {
    this.forget(tokenId);
    await this.database.notify(serviceTokenRevokedChannel, tokenId);
  }

  /** Calls fn with each token id revoked from now on: open exchanges end at once. */
  onRevoked(fn: (tokenId: string) => void): () => void {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  private forget(tokenId: string) {
    for (const [prefix, e] of this.verified) if (e.tokenId === tokenId) this.verified.delete(prefix);
    for (const fn of this.listeners) fn(tokenId);
  }
}
