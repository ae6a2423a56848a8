import { createPrivateKey, createPublicKey, generateKeyPairSync, type KeyObject } from 'node:crypto';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { desc, isNull, sql } from 'drizzle-orm';
import { calculateJwkThumbprint, type JWK } from 'jose';
import type { Clock } from '../clock.ts';
import type { DbOrTx } from '../db/open.ts';
import { signingKeys } from '../db/schema/index.ts';

/** An Ed25519 private key as a JWK: what the signing_keys table or the key file holds. */
interface PrivateJwk {
  kty: 'OKP';
  crv: 'Ed25519';
  x: string;
  d: string;
  kid?: string;
}

export interface SigningKey {
  kid: string;
  privateKey: KeyObject;
  publicJwk: JWK;
}

export interface Jwks {
  keys: JWK[];
}

/** How often a replica re-reads the table, so that a rotation elsewhere reaches its JWKS. */
const refreshMs = 60_000;

function newKeyPair(): PrivateJwk {
  const { privateKey } = generateKeyPairSync('ed25519');
  return privateKey.export({ format: 'jwk' }) as PrivateJwk;
}

const publicPart = (jwk: PrivateJwk) => ({ kty: jwk.kty, crv: jwk.crv, x: jwk.x });

async function toSigningKey(jwk: PrivateJwk, kid?: string): Promise<SigningKey> {
  const id = kid ?? jwk.kid ?? (await calculateJwkThumbprint(publicPart(jwk)));
  return {
    kid: id,
    privateKey: createPrivateKey({ key: { ...publicPart(jwk), d: jwk.d }, format: 'jwk' }),
    publicJwk: { ...publicPart(jwk), kid: id, alg: 'EdDSA', use: 'sig' },
  };
}

function readKeyFile(path: string): PrivateJwk {
  if (!existsSync(path)) {
    const jwk = newKeyPair();
    // Made once and kept: the file is the key (mode 0600, never overwritten).
    writeFileSync(path, `${JSON.stringify(jwk)}\n`, { mode: 0o600, flag: 'wx' });
    return jwk;
  }
  let jwk: PrivateJwk;
  try {
    jwk = JSON.parse(readFileSync(path, 'utf8')) as PrivateJwk;
  } catch (err) {
    throw new Error(`GANTRY_SIGNING_KEY_FILE ${path} is not a JSON private key: ${(err as Error).message}`);
  }
  if (jwk?.kty !== 'OKP' || jwk.crv !== 'Ed25519' || typeof jwk.d !== 'string' || typeof jwk.x !== 'string') {
    throw new Error(`GANTRY_SIGNING_KEY_FILE ${path} is not an Ed25519 private JWK`);
  }
  // A public key that does not belong to the private one would sign tokens nobody can verify.
  const derived = createPublicKey(createPrivateKey({ key: { ...jwk }, format: 'jwk' })).export({ format: 'jwk' });
  if (derived.x !== jwk.x) throw new Error(`GANTRY_SIGNING_KEY_FILE ${path}: x is not the public half of d`);
  return jwk;
}

/**
 * The coordinator's lease signing keys. It signs with the newest unretired key (or the key
 * file's) and publishes every unretired public key, so that a rotation never invalidates a
 * lease signed with the key before it: that one stays in the JWKS until it is retired.
 */
export class SigningKeys {
  private active!: SigningKey;
  private published: JWK[] = [];
  private loadedAt = 0;
  private refreshing: Promise<void> | null = null;

  private constructor(
    private db: DbOrTx,
    private clock: Clock,
    private fileKey: SigningKey | null,
    /** Keys superseded longer ago than this are retired at the next rotation. */
    private retireAfterMs: number,
  ) {}

  static async load(opts: { db: DbOrTx; clock: Clock; keyFile: string | null; leaseTtlSeconds: number }): Promise<SigningKeys> {
    const fileKey = opts.keyFile ? await toSigningKey(readKeyFile(opts.keyFile)) : null;
    const keys = new SigningKeys(opts.db, opts.clock, fileKey, 2 * opts.leaseTtlSeconds * 1000);
    if (fileKey) {
      // Published through the table so every replica's JWKS carries it; the private half stays in the file.
      await opts.db
        .insert(signingKeys)
        .values({ kid: fileKey.kid, privateJwk: null, publicJwk: fileKey.publicJwk as Record<string, string> })
        .onConflictDoUpdate({ target: signingKeys.kid, set: { retiredAt: null } });
    }
    await keys.reload();
    return keys;
  }

  /** The key new leases are signed with. */
  current(): SigningKey {
    this.maybeRefresh();
    return this.active;
  }

  /** GET /.well-known/jwks.json: every unretired public key. */
  jwks(): Jwks {
    this.maybeRefresh();
    return { keys: this.published };
  }

  /** Makes a new key the one that signs; the old ones stay published until retired. */
  async rotate(): Promise<SigningKey> {
    if (this.fileKey) throw new Error('the signing key comes from GANTRY_SIGNING_KEY_FILE: replace the file to rotate');
    const now = this.clock.now();
    const jwk = newKeyPair();
    const key = await toSigningKey(jwk);
    await this.db.insert(signingKeys).values({
      kid: key.kid,
      privateJwk: { ...jwk, kid: key.kid },
      publicJwk: key.publicJwk as Record<string, string>,
      createdAt: now,
    });
    await this.retireSuperseded(now);
    await this.reload();
    return key;
  }

  /**
   * Retires keys whose successor is older than two lease TTLs: no unexpired lease can carry
   * them any more (a lease token lives one TTL).
   */
  async retireSuperseded(now: Date): Promise<number> {
    const rows = await this.db
      .select({ kid: signingKeys.kid, createdAt: signingKeys.createdAt, hasPrivate: sql<boolean>`${signingKeys.privateJwk} is not null` })
      .from(signingKeys)
      .where(isNull(signingKeys.retiredAt))
      .orderBy(desc(signingKeys.createdAt), desc(signingKeys.kid));
    const stale: string[] = [];
    let newer: Date | null = null;
    for (const row of rows) {
      if (this.fileKey?.kid === row.kid) continue;
      if (newer && now.getTime() - newer.getTime() > this.retireAfterMs) stale.push(row.kid);
      newer = row.createdAt;
    }
    if (!stale.length) return 0;
    await this.db
      .update(signingKeys)
      .set({ retiredAt: now })
      .where(sql`${signingKeys.kid} in (${sql.join(stale.map((k) => sql`${k}`), sql`, `)})`);
    return stale.length;
  }

  /** Re-reads the table: the newest unretired key signs, all unretired ones are published. */
  async reload(): Promise<void> {
    let rows = await this.db
      .select()
      .from(signingKeys)
      .where(isNull(signingKeys.retiredAt))
      .orderBy(desc(signingKeys.createdAt), desc(signingKeys.kid));
    let signer = this.fileKey;
    if (!signer) {
      let newest = rows.find((r) => r.privateJwk);
      if (!newest) {
        // First start: make the first key. Two replicas doing this at once both publish theirs.
        const jwk = newKeyPair();
        const key = await toSigningKey(jwk);
        await this.db
          .insert(signingKeys)
          .values({ kid: key.kid, privateJwk: { ...jwk, kid: key.kid }, publicJwk: key.publicJwk as Record<string, string> });
        rows = await this.db
          .select()
          .from(signingKeys)
          .where(isNull(signingKeys.retiredAt))
          .orderBy(desc(signingKeys.createdAt), desc(signingKeys.kid));
        newest = rows.find((r) => r.privateJwk)!;
      }
      signer = await toSigningKey(newest.privateJwk as unknown as PrivateJwk, newest.kid);
    }
    this.active = signer;
    this.published = rows.map((r) => ({ ...(r.publicJwk as JWK), kid: r.kid, alg: 'EdDSA', use: 'sig' }));
    if (!this.published.some((k) => k.kid === signer.kid)) this.published.unshift(signer.publicJwk);
    this.loadedAt = this.clock.now().getTime();
  }

  private maybeRefresh() {
    if (this.refreshing || this.clock.now().getTime() - this.loadedAt < refreshMs) return;
    this.refreshing = this.reload()
      .catch(() => {
        this.loadedAt = this.clock.now().getTime(); // keep serving the keys it has; try again later
      })
      .finally(() => {
        this.refreshing = null;
      });
  }
}
