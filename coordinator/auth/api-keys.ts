import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import { eq, sql } from 'drizzle-orm';
import type { Scope } from '../../shared/accounts.ts';
import { newId, randomLowercase } from '../../shared/ids.ts';
import type { Clock } from '../clock.ts';
import type { Database, DbOrTx } from '../db/open.ts';
import { apiKeys } from '../db/schema/index.ts';
import { ApiError } from '../errors.ts';

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
  made: { byKeyId?: string | null; expiresAt?: Date | null } = {},
): Promise<{ key: string; row: typeof apiKeys.$inferSelect }> {
  const { key, prefix, hash } = generateKey();
  const [row] = await db
    .insert(apiKeys)
    .values({
      id: newId('apiKey'),
      accountId,
      prefix,
      hash,
      scopes,
      name,
      createdByKeyId: made.byKeyId ?? null,
      expiresAt: made.expiresAt ?? null,
    })
    .returning();
  return { key, row: row! };
}

/** How often last_used_at is written for one key: not on every request. */
const lastUsedWriteMs = 60_000;
/**
 * How long a verified key is trusted without asking the database again. A revocation clears it
 * at once here and, through NOTIFY, on the other replicas; this bounds a lost notification.
 */
const verifiedCacheMs = 5_000;
const maxCachedKeys = 10_000;
/** The NOTIFY channel on which a revoked key's id travels to every replica. */
export const keyRevokedChannel = 'gantry_key_revoked';

interface KeyState {
  revokedAt: Date | null;
  expiresAt: Date | null;
}

/** Why a key whose secret matched no longer holds, or null while it does. */
function refusalOf(row: KeyState, at: Date): ApiError | null {
  if (row.revokedAt) return new ApiError('unauthenticated', 'the API key was revoked');
  if (row.expiresAt && row.expiresAt.getTime() <= at.getTime()) {
    return new ApiError('unauthenticated', `the API key expired at ${row.expiresAt.toISOString()}`);
  }
  return null;
}

interface VerifiedKey {
  principal: Principal;
  hash: Buffer;
  until: number;
}

export class KeyVerifier {
  private lastWrite = new Map<string, number>();
  private verified = new Map<string, VerifiedKey>();
  private forgotten = new Set<(keyId: string) => void>();

  constructor(
    private database: Database,
    private clock: Clock,
  ) {}

  /** Follows revocations made by other replicas; the returned function stops following. */
  async listenForRevocations(): Promise<() => Promise<void>> {
    return this.database.listen(keyRevokedChannel, (keyId) => this.forget(keyId));
  }

  async verify(header: string | undefined): Promise<Principal> {
    const token = header?.match(/^Bearer\s+(\S+)$/i)?.[1];
    if (!token) throw new ApiError('unauthenticated', 'send an API key as "Authorization: Bearer <key>"');
    const m = token.match(keyPattern);
    if (!m) throw new ApiError('unauthenticated', 'the API key is not valid');
    const [, prefix, secret] = m;
    const given = Buffer.from(sha256(secret!), 'hex');
    const now = performance.now();
    let entry = this.verified.get(prefix!);
    if (!entry || entry.until <= now) {
      const at = this.clock.now();
      const [row] = await this.keyByPrefix().execute({ prefix: prefix! });
      // Why a key is refused is said only to whoever holds its secret (a prefix is no secret).
      if (!row || !timingSafeEqual(given, Buffer.from(row.hash, 'hex'))) {
        this.verified.delete(prefix!);
        throw new ApiError('unauthenticated', 'the API key is not valid');
      }
      const refusal = refusalOf(row, at);
      if (refusal) {
        this.verified.delete(prefix!);
        throw refusal;
      }
      // An expiring key is trusted from memory no longer than it lives.
      const lifeLeftMs = row.expiresAt ? row.expiresAt.getTime() - at.getTime() : Infinity;
      entry = {
        principal: { accountId: row.accountId, keyId: row.id, scopes: row.scopes as Scope[] },
        hash: Buffer.from(row.hash, 'hex'),
        until: now + Math.min(verifiedCacheMs, lifeLeftMs),
      };
      // Only a key whose secret matches is remembered, so guesses cannot fill the cache.
      this.remember(prefix!, entry);
    }
    if (!timingSafeEqual(given, entry.hash)) {
      throw new ApiError('unauthenticated', 'the API key is not valid');
    }
    this.touch(entry.principal.keyId);
    return entry.principal;
  }

  /**
   * Which of these keys no longer hold (revoked, expired, gone), with why: one query for all of
   * them, whatever the cache says. What long-lived answers re-check their keys with.
   */
  async refusals(keyIds: string[]): Promise<Map<string, ApiError>> {
    const out = new Map<string, ApiError>();
    if (!keyIds.length) return out;
    const at = this.clock.now();
    const rows = await this.keyStates().execute({ ids: keyIds.join(',') });
    const found = new Map(rows.map((r) => [r.id, r]));
    for (const id of keyIds) {
      const row = found.get(id);
      const refusal = row ? refusalOf(row, at) : new ApiError('unauthenticated', 'the API key is not valid');
      if (!refusal) continue;
      out.set(id, refusal);
      // Requests with it are refused from now on too, not only once its cached verdict runs out.
      this.uncache(id);
    }
    return out;
  }

  // Prepared once: a request's key read is one round trip, never a describe first (PITFALLS.md).
  private keyByPrefixQuery: ReturnType<KeyVerifier['prepareKeyByPrefix']> | null = null;
  private keyByPrefix() {
    return (this.keyByPrefixQuery ??= this.prepareKeyByPrefix());
  }
  private prepareKeyByPrefix() {
    return this.database.db
      .select({
        id: apiKeys.id,
        accountId: apiKeys.accountId,
        hash: apiKeys.hash,
        scopes: apiKeys.scopes,
        revokedAt: apiKeys.revokedAt,
        expiresAt: apiKeys.expiresAt,
      })
      .from(apiKeys)
      .where(eq(apiKeys.prefix, sql.placeholder('prefix')))
      .limit(1)
      .prepare('gantry_key_by_prefix');
  }

  // One text parameter whatever the count (key ids hold no comma): one prepared statement.
  private keyStatesQuery: ReturnType<KeyVerifier['prepareKeyStates']> | null = null;
  private keyStates() {
    return (this.keyStatesQuery ??= this.prepareKeyStates());
  }
  private prepareKeyStates() {
    return this.database.db
      .select({ id: apiKeys.id, revokedAt: apiKeys.revokedAt, expiresAt: apiKeys.expiresAt })
      .from(apiKeys)
      .where(sql`${apiKeys.id} = any(string_to_array(${sql.placeholder('ids')}, ','))`)
      .prepare('gantry_key_states');
  }

  /** After a revocation: this replica forgets the keys now, the others when the NOTIFY reaches them. */
  async revoked(keyIds: string[]): Promise<void> {
    for (const keyId of keyIds) {
      this.forget(keyId);
      await this.database.notify(keyRevokedChannel, keyId);
    }
  }

  /** Calls fn with each key id revoked from now on (here or on another replica): open streams end at once. */
  onRevoked(fn: (keyId: string) => void): () => void {
    this.forgotten.add(fn);
    return () => this.forgotten.delete(fn);
  }

  private forget(keyId: string) {
    this.uncache(keyId);
    for (const fn of this.forgotten) fn(keyId);
  }

  private uncache(keyId: string) {
    for (const [prefix, entry] of this.verified) if (entry.principal.keyId === keyId) this.verified.delete(prefix);
  }

  private remember(prefix: string, entry: VerifiedKey) {
    if (this.verified.size >= maxCachedKeys) this.verified.delete(this.verified.keys().next().value!);
    this.verified.set(prefix, entry);
  }

  private touch(keyId: string) {
    const now = this.clock.now().getTime();
    if (now - (this.lastWrite.get(keyId) ?? 0) < lastUsedWriteMs) return;
    this.lastWrite.set(keyId, now);
    void this.database.db
      .update(apiKeys)
      .set({ lastUsedAt: new Date(now) })
      .where(eq(apiKeys.id, keyId))
      .catch(() => this.lastWrite.delete(keyId));
  }
}

export const hasScope = (p: Principal, s: Scope) => p.scopes.includes('admin') || p.scopes.includes(s);
