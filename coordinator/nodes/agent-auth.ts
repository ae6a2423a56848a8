import { eq } from 'drizzle-orm';
import type { MiddlewareHandler } from 'hono';
import { decodeJwt, decodeProtectedHeader, errors as joseErrors, importJWK, jwtVerify, type JWK } from 'jose';
import { idPattern } from '../../shared/ids.ts';
import { agentTokenMaxLifetimeSeconds } from '../../shared/nodes.ts';
import type { Clock } from '../clock.ts';
import type { DbOrTx } from '../db/open.ts';
import { nodes } from '../db/schema/index.ts';
import type { AppDeps } from '../deps.ts';
import type { AppEnv } from '../http/env.ts';
import { ApiError } from '../http/problem.ts';

/** Leeway for clocks that disagree a little between a provider's machine and the coordinator. */
const clockSkewSeconds = 5;
const nodeIdPattern = idPattern('node');

const refuse = (why: string) => new ApiError('unauthenticated', why);

/**
 * Verifies the JWT an agent signs with its own Ed25519 key: sub = its node id, aud = this
 * coordinator's name, alg EdDSA only, a lifetime of at most a minute. The coordinator keeps only
 * the public key. A verified token is remembered until it expires (an LRU keyed by the token
 * string): the agent reuses one token for most of a minute, and verifying costs ~0.3 ms of CPU.
 */
export class AgentVerifier {
  private cache = new Map<string, { nodeId: string; expMs: number }>();

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

  /** Drops what is cached for a node (it was retired): its next token is checked against the database. */
  forgetNode(nodeId: string): void {
    for (const [token, entry] of this.cache) if (entry.nodeId === nodeId) this.cache.delete(token);
  }

  get cachedTokens(): number {
    return this.cache.size;
  }

  private remember(token: string, entry: { nodeId: string; expMs: number }) {
    if (this.cache.size >= this.maxCached) {
      const oldest = this.cache.keys().next().value;
      if (oldest !== undefined) this.cache.delete(oldest);
    }
    this.cache.set(token, entry);
  }

  private async verifyFresh(token: string, now: Date): Promise<{ nodeId: string; expMs: number }> {
    let sub: unknown;
    try {
      if (decodeProtectedHeader(token).alg !== 'EdDSA') throw refuse('agent tokens are signed with EdDSA only');
      sub = decodeJwt(token).sub;
    } catch (err) {
      if (err instanceof ApiError) throw err;
      throw refuse('the agent token is not a JWT');
    }
    if (typeof sub !== 'string' || !nodeIdPattern.test(sub)) throw refuse('the agent token does not name a node');
    const [node] = await this.db
      .select({ publicKey: nodes.publicKey, status: nodes.status })
      .from(nodes)
      .where(eq(nodes.id, sub));
    if (!node) throw refuse('the agent token names an unknown node');
    if (node.status === 'retired') throw refuse('this node was retired; join it again to serve');
    let payload;
    try {
      const key = await importJWK(node.publicKey as JWK, 'EdDSA');
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

/** Authenticates an agent request by its own signed token; sets c.get('nodeId'). */
export function requireAgent(deps: Pick<AppDeps, 'agents'>): MiddlewareHandler<AppEnv> {
  return async (c, next) => {
    c.set('nodeId', await deps.agents.verify(c.req.header('authorization')));
    await next();
  };
}
