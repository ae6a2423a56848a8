import { eq } from 'drizzle-orm';
import { decodeJwt, decodeProtectedHeader, errors as joseErrors, importJWK, jwtVerify, type CryptoKey, type JWK } from 'jose';
import { idPattern } from '../../shared/ids.ts';
import { agentTokenMaxLifetimeSeconds } from '../../shared/nodes.ts';
import type { Clock } from '../clock.ts';
import type { DbOrTx } from '../db/open.ts';
import { nodes } from '../db/schema/index.ts';
import { ApiError } from '../errors.ts';

/** Leeway for clocks that disagree a little between a provider's machine and the coordinator. */
const clockSkewSeconds = 5;
const nodeIdPattern = idPattern('node');
/** How long a replica trusts a node's key without reading its row again (another replica may retire it). */
const keyCacheMs = 5 * 60_000;

/** The NOTIFY channel on which a retired node's id travels to every replica (they drop its cached key). */
export const nodeRetiredChannel = 'gantry_node_retired';

const refuse = (why: string) => new ApiError('unauthenticated', why);

/**
 * Verifies the JWT an agent signs with its own Ed25519 key: sub = its node id, aud = this
 * coordinator's name, alg EdDSA only, a lifetime of at most a minute. The coordinator keeps only
 * the public key. A verified token is remembered until it expires (an LRU keyed by the token
 * string): the agent reuses one token for most of a minute, and verifying costs ~0.3 ms of CPU.
 */
export class AgentVerifier {
  private cache = new Map<string, { nodeId: string; expMs: number }>();
  // Nodes' public keys, imported: a node's key never changes, so only retirement (forgetNode,
  // and the TTL for other replicas' retirements) takes one out.
  private keys = new Map<string, { key: CryptoKey; untilMs: number }>();

  constructor(
    private db: DbOrTx,
    private clock: Clock,
    private audience: string,
    private maxCached = 50_000,
  ) {}

  async verify(header: string | undefined): Promise<string> {
    const token = header?.match(/^Bearer\s+(\S+)$/i)?.[1];
    if (!token) throw refuse('send the agent token as "Authorization: Bearer <jwt>"');
    const now = this.clock.now();
    const hit = this.cache.get(token);
    if (hit) {
      this.cache.delete(token);
      if (hit.expMs <= now.getTime() - clockSkewSeconds * 1000) throw refuse('the agent token expired');
      this.cache.set(token, hit); // most recently used goes last
      return hit.nodeId;
    }
    const verified = await this.verifyFresh(token, now);
    this.remember(token, verified);
    return verified.nodeId;
  }

  /** Throws (401) when the node no longer serves: retired, or unknown. Free while its key is cached. */
  async requireServing(nodeId: string): Promise<void> {
    await this.publicKey(nodeId, this.clock.now().getTime());
  }

  /** Drops what is cached for a node (it was retired): its next token is checked against the database. */
  forgetNode(nodeId: string): void {
    this.keys.delete(nodeId);
    for (const [token, entry] of this.cache) if (entry.nodeId === nodeId) this.cache.delete(token);
  }

  get cachedTokens(): number {
    return this.cache.size;
  }

  private remember(token: string, entry: { nodeId: string; expMs: number }) {
    bounded(this.cache, this.maxCached).set(token, entry);
  }

  /** The node's public key: from memory, else from its row (an unknown or retired node has none). */
  private async publicKey(nodeId: string, nowMs: number): Promise<CryptoKey> {
    const known = this.keys.get(nodeId);
    if (known && known.untilMs > nowMs) return known.key;
    const [node] = await this.db
      .select({ publicKey: nodes.publicKey, status: nodes.status })
      .from(nodes)
      .where(eq(nodes.id, nodeId));
    if (!node) throw refuse('the agent token names an unknown node');
    if (node.status === 'retired') throw refuse('this node was retired; join it again to serve');
    let key: CryptoKey;
    try {
      key = (await importJWK(node.publicKey as JWK, 'EdDSA')) as CryptoKey;
    } catch {
      throw refuse("the node's stored key is not an Ed25519 public key");
    }
    bounded(this.keys, this.maxCached).set(nodeId, { key, untilMs: nowMs + keyCacheMs });
    return key;
  }

  private async verifyFresh(token: string, now: Date): Promise<{ nodeId: string; expMs: number }> {
    let claims: { sub?: unknown; exp?: unknown };
    try {
      if (decodeProtectedHeader(token).alg !== 'EdDSA') throw refuse('agent tokens are signed with EdDSA only');
      claims = decodeJwt(token);
    } catch (err) {
      if (err instanceof ApiError) throw err;
      throw refuse('the agent token is not a JWT');
    }
    const sub = claims.sub;
    if (typeof sub !== 'string' || !nodeIdPattern.test(sub)) throw refuse('the agent token does not name a node');
    // Refused before any lookup or signature check: a backlog of stale tokens must stay cheap.
    if (typeof claims.exp === 'number' && claims.exp + clockSkewSeconds < now.getTime() / 1000) {
      throw refuse("the agent token expired (is this machine's clock right?)");
    }
    const key = await this.publicKey(sub, now.getTime());
    let payload;
    try {
      ({ payload } = await jwtVerify(token, key, {
        algorithms: ['EdDSA'],
        audience: this.audience,
        subject: sub,
        currentDate: now,
        clockTolerance: clockSkewSeconds,
        requiredClaims: ['exp', 'iat'],
      }));
    } catch (err) {
      throw refuse(describeJoseError(err));
    }
    const exp = payload.exp!;
    const iat = payload.iat!;
    const nowSeconds = now.getTime() / 1000;
    if (exp - iat > agentTokenMaxLifetimeSeconds) throw refuse(`an agent token may live at most ${agentTokenMaxLifetimeSeconds} s`);
    if (exp > nowSeconds + agentTokenMaxLifetimeSeconds + clockSkewSeconds) {
      throw refuse("the agent token's expiry is too far ahead: is this machine's clock right?");
    }
    return { nodeId: sub, expMs: exp * 1000 };
  }
}

/** The map, with its oldest entry dropped when it is full (Map keeps insertion order). */
function bounded<K, V>(map: Map<K, V>, max: number): Map<K, V> {
  if (map.size >= max) {
    const oldest = map.keys().next();
    if (!oldest.done) map.delete(oldest.value);
  }
  return map;
}

function describeJoseError(err: unknown): string {
  if (err instanceof joseErrors.JWTExpired) return "the agent token expired (is this machine's clock right?)";
  if (err instanceof joseErrors.JWSSignatureVerificationFailed) return "the agent token is not signed by this node's key";
  if (err instanceof joseErrors.JWTClaimValidationFailed) {
    if (err.claim === 'aud') return 'the agent token is for another coordinator';
    return `the agent token's ${err.claim} claim is not valid`;
  }
  if (err instanceof joseErrors.JOSEAlgNotAllowed) return 'agent tokens are signed with EdDSA only';
  return 'the agent token is not valid';
}
