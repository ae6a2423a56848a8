import { SignJWT, type CryptoKey } from 'jose';
import { agentTokenMaxLifetimeSeconds } from '../shared/nodes.ts';

/**
 * The JWT each agent request carries, signed with the agent's own key: sub = its node id,
 * aud = the coordinator's name, a minute of life. One token serves until shortly before it
 * expires, so the coordinator verifies it once and answers the rest from its cache.
 */
export class AgentTokenSigner {
  private current: { token: string; expMs: number } | null = null;
  private signing: Promise<string> | null = null;

  constructor(
    private privateKey: CryptoKey,
    private nodeId: string,
    private audience: string,
    private opts: { lifetimeSeconds?: number; renewBeforeSeconds?: number; now?: () => number } = {},
  ) {}

  async token(): Promise<string> {
    const now = (this.opts.now ?? Date.now)();
    const renewBeforeMs = (this.opts.renewBeforeSeconds ?? 15) * 1000;
    const left = this.current ? this.current.expMs - now : 0;
    // More left than a whole lifetime: the clock moved back (the coordinator's clock became known); sign anew.
    if (this.current && left > renewBeforeMs && left <= this.lifetimeSeconds() * 1000) return this.current.token;
    this.signing ??= this.sign(now).finally(() => (this.signing = null));
    return this.signing;
  }

  private lifetimeSeconds(): number {
    return Math.min(this.opts.lifetimeSeconds ?? agentTokenMaxLifetimeSeconds, agentTokenMaxLifetimeSeconds);
  }

  private async sign(nowMs: number): Promise<string> {
    const lifetime = this.lifetimeSeconds();
    const iat = Math.floor(nowMs / 1000);
    const token = await new SignJWT({})
      .setProtectedHeader({ alg: 'EdDSA', typ: 'JWT' })
      .setSubject(this.nodeId)
      .setAudience(this.audience)
      .setIssuedAt(iat)
      .setExpirationTime(iat + lifetime)
      .sign(this.privateKey);
    this.current = { token, expMs: (iat + lifetime) * 1000 };
    return token;
  }
}
