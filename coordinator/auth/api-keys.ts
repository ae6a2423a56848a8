import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import { and, eq, isNull } from 'drizzle-orm';
import type { MiddlewareHandler } from 'hono';
import type { Scope } from '../../shared/accounts.ts';
import { newId, randomLowercase } from '../../shared/ids.ts';
import type { Clock } from '../clock.ts';
import type { DbOrTx } from '../db/open.ts';
import { apiKeys } from '../db/schema/index.ts';
import type { AppEnv } from '../http/env.ts';
import { ApiError } from '../http/problem.ts';

export interface Principal {
  accountId: string;
  keyId: string;
  scopes: Scope[];
}

// A key reads gk_<prefix>_<secret>: the prefix finds the row, the secret's hash proves it.
const keyPattern = /^gk_([0-9a-z]{12})_([A-Za-z0-9_-]{43})$/;
const sha256 = (s: string) => createHash('sha256').update(s).digest('hex');

export function generateKey(): { key: string; prefix: string; hash: string } {
  const prefix = randomLowercase(12);
  const secret = randomBytes(32).toString('base64url');
  return { key: `gk_${prefix}_${secret}`, prefix, hash: sha256(secret) };
}

export async function insertKey(
  db: DbOrTx,
  accountId: string,
  scopes: Scope[],
  name: string | null,
): Promise<{ key: string; row: typeof apiKeys.$inferSelect }> {
  const { key, prefix, hash } = generateKey();
  const [row] = await db
    .insert(apiKeys)
    .values({ id: newId('apiKey'), accountId, prefix, hash, scopes, name })
    .returning();
  return { key, row: row! };
}

/** How often last_used_at is written for one key: not on every request. */
const lastUsedWriteMs = 60_000;

export class KeyVerifier {
  private lastWrite = new Map<string, number>();

  constructor(
    private db: DbOrTx,
    private clock: Clock,
  ) {}

  async verify(header: string | undefined): Promise<Principal> {
    const token = header?.match(/^Bearer\s+(\S+)$/i)?.[1];
    if (!token) throw new ApiError('unauthenticated', 'send an API key as "Authorization: Bearer <key>"');
    const m = token.match(keyPattern);
    if (!m) throw new ApiError('unauthenticated', 'the API key is not valid');
    const [, prefix, secret] = m;
    const [row] = await this.db
      .select()
      .from(apiKeys)
      .where(and(eq(apiKeys.prefix, prefix!), isNull(apiKeys.revokedAt)))
      .limit(1);
    const given = Buffer.from(sha256(secret!), 'hex');
    if (!row || !timingSafeEqual(given, Buffer.from(row.hash, 'hex'))) {
      throw new ApiError('unauthenticated', 'the API key is not valid or was revoked');
    }
    this.touch(row.id);
    return { accountId: row.accountId, keyId: row.id, scopes: row.scopes as Scope[] };
  }

  private touch(keyId: string) {
    const now = this.clock.now().getTime();
    if (now - (this.lastWrite.get(keyId) ?? 0) < lastUsedWriteMs) return;
    this.lastWrite.set(keyId, now);
    void this.db
      .update(apiKeys)
      .set({ lastUsedAt: new Date(now) })
      .where(eq(apiKeys.id, keyId))
      .catch(() => this.lastWrite.delete(keyId));
  }
}

/** Authenticates the request's key; with scopes, the key must hold one of them (admin holds all). */
export function requireKey(verifier: KeyVerifier, ...anyOf: Scope[]): MiddlewareHandler<AppEnv> {
  return async (c, next) => {
    const principal = await verifier.verify(c.req.header('authorization'));
    if (anyOf.length && !principal.scopes.includes('admin') && !anyOf.some((s) => principal.scopes.includes(s))) {
      throw new ApiError('forbidden', `this key lacks the ${anyOf.join(' or ')} scope`);
    }
    c.set('principal', principal);
    await next();
  };
}

export const hasScope = (p: Principal, s: Scope) => p.scopes.includes('admin') || p.scopes.includes(s);
