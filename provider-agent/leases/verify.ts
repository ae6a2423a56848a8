import { createLocalJWKSet, errors as joseErrors, jwtVerify, type JSONWebKeySet } from 'jose';
import { specDigest } from '../../shared/digest.ts';
import { LeaseClaims, type LeaseGrant } from '../../shared/leases.ts';

/** A lease the agent will not run, and why (in words for its log and its refusal report). */
export class LeaseRefused extends Error {}

/** The JWKS could not be fetched: nothing is refused, the runner tries again later. */
export class JwksUnavailable extends Error {}

/** Leeway for a provider's clock that disagrees a little with the coordinator's. */
const clockToleranceSeconds = 5;
/** An unknown kid makes the agent fetch the JWKS again (a rotation), but not more often than this. */
const refetchMs = 30_000;

export interface LeaseVerifierOptions {
  /** The coordinator's name, stored at join: the issuer every lease must carry. */
  issuer: string;
  /** This node's id: the audience every lease must name. */
  nodeId: string;
  /** Fetches the coordinator's JWKS (GET /.well-known/jwks.json). */
  fetchJwks: () => Promise<JSONWebKeySet>;
  now?: () => Date;
}

/**
 * Checks a lease before anything runs: signed by one of the coordinator's published keys with
 * EdDSA (and nothing else: not none, not HS256), issued by the coordinator this node joined,
 * for this node, not expired, and for exactly the job spec, GPUs and resources it came with.
 */
export class LeaseVerifier {
  private jwks: ReturnType<typeof createLocalJWKSet> | null = null;
  private fetchedAt = 0;

  constructor(private opts: LeaseVerifierOptions) {}

  private async keySet(force: boolean) {
    const now = Date.now();
    if (!this.jwks || (force && now - this.fetchedAt > refetchMs)) {
      let set: JSONWebKeySet;
      try {
        set = await this.opts.fetchJwks();
      } catch (err) {
        throw new JwksUnavailable(`cannot fetch the coordinator's keys: ${(err as Error)?.message ?? String(err)}`);
      }
      this.jwks = createLocalJWKSet(set);
      this.fetchedAt = now;
    }
    return this.jwks;
  }

  /** The verified claims, or LeaseRefused. */
  async verify(grant: LeaseGrant): Promise<LeaseClaims> {
    let payload: unknown;
    try {
      payload = await this.check(grant.token, false);
    } catch (err) {
      // A key this agent has not seen yet: the coordinator may have rotated. Look once more.
      if (!(err instanceof joseErrors.JWKSNoMatchingKey)) throw refusal(err);
      try {
        payload = await this.check(grant.token, true);
      } catch (again) {
        throw refusal(again);
      }
    }
    const parsed = LeaseClaims.safeParse(payload);
    if (!parsed.success) throw new LeaseRefused('the lease lacks the claims a lease carries');
    const c = parsed.data;
    if (c.sub !== grant.jobId) throw new LeaseRefused(`the lease is for job ${c.sub}, not ${grant.jobId}`);
    if (c.epoch !== grant.epoch) throw new LeaseRefused(`the lease is for epoch ${c.epoch}, not ${grant.epoch}`);
    if (c.spec !== specDigest(grant.spec)) throw new LeaseRefused('the job spec does not match the digest the lease was signed for');
    const gpus = grant.gpus.map((g) => g.id);
    if (c.gpus.length !== gpus.length || c.gpus.some((g, i) => g !== gpus[i])) {
      throw new LeaseRefused('the GPUs named do not match the ones the lease was signed for');
    }
    if (c.res.cpuMillis !== grant.cpuMillis || c.res.memoryMb !== grant.memoryMb) {
      throw new LeaseRefused('the CPU and memory do not match what the lease was signed for');
    }
    return c;
  }

  /** Checks a renewed token for a lease the agent already holds (same job, same epoch). */
  async verifyRenewal(token: string, jobId: string, epoch: number): Promise<LeaseClaims> {
    let payload: unknown;
    try {
      payload = await this.check(token, false).catch((err) => {
        if (err instanceof joseErrors.JWKSNoMatchingKey) return this.check(token, true);
        throw err;
      });
    } catch (err) {
      throw refusal(err);
    }
    const parsed = LeaseClaims.safeParse(payload);
    if (!parsed.success || parsed.data.sub !== jobId || parsed.data.epoch !== epoch) {
      throw new LeaseRefused('the renewed lease is not for the job and epoch held');
    }
    return parsed.data;
  }

  private async check(token: string, refetch: boolean) {
    const { payload } = await jwtVerify(token, await this.keySet(refetch), {
      algorithms: ['EdDSA'],
      issuer: this.opts.issuer,
      audience: this.opts.nodeId,
      requiredClaims: ['exp', 'iat', 'sub', 'jti'],
      clockTolerance: clockToleranceSeconds,
      ...(this.opts.now ? { currentDate: this.opts.now() } : {}),
    });
    return payload;
  }
}

function refusal(err: unknown): Error {
  if (err instanceof LeaseRefused || err instanceof JwksUnavailable) return err;
  if (err instanceof joseErrors.JWTExpired) return new LeaseRefused('the lease expired');
  if (err instanceof joseErrors.JOSEAlgNotAllowed) return new LeaseRefused('the lease is not signed with EdDSA');
  if (err instanceof joseErrors.JWKSNoMatchingKey) return new LeaseRefused("the lease is not signed by any of the coordinator's keys");
  if (err instanceof joseErrors.JWSSignatureVerificationFailed) return new LeaseRefused("the lease's signature does not verify");
  if (err instanceof joseErrors.JWTClaimValidationFailed) {
    if (err.claim === 'aud') return new LeaseRefused('the lease is for another node');
    if (err.claim === 'iss') return new LeaseRefused('the lease is from another coordinator');
    return new LeaseRefused(`the lease's ${err.claim} claim is not valid`);
  }
  if (err instanceof joseErrors.JOSEError) return new LeaseRefused(`the lease does not verify (${err.code})`);
  return new LeaseRefused(`the lease could not be checked: ${(err as Error)?.message ?? String(err)}`);
}
