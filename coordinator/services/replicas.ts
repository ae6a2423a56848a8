import { createPublicKey, sign, verify, type KeyObject } from 'node:crypto';
import { and, eq } from 'drizzle-orm';
import type { JWK } from 'jose';
import type { Clock } from '../clock.ts';
import type { Database } from '../db/open.ts';
import { agentTunnels } from '../db/schema/index.ts';
import type { SigningKey } from '../leases/keys.ts';

// Service requests between coordinator replicas: the replica that holds a node's tunnel is kept in
// agent_tunnels (its GANTRY_INTERNAL_URL); another replica forwards a request there, with a
// short-lived token signed by the coordinators' own lease keys (every replica publishes the same
// keys), whose audience names the receiving replica and whose subject names the job.

/** The header that carries a forwarded request's replica token. */
export const replicaTokenHeader = 'x-gantry-replica-token';
const tokenType = 'gantry-replica+jwt';
const lifeSeconds = 30;
const b64 = (s: string) => Buffer.from(s).toString('base64url');

export interface ReplicaKeys {
  current(): SigningKey;
  jwks(): { keys: JWK[] };
}

export class Replicas {
  private holders = new Map<string, { at: number; value: Promise<string | null> }>();
  private publicKeys = new Map<string, KeyObject>();

  constructor(
    private database: Database,
    private clock: Clock,
    private keys: ReplicaKeys,
    /** This replica's internal URL; null: a single replica (nothing recorded, nothing forwarded). */
    readonly self: string | null,
    private issuer: string,
  ) {}

  /** This replica now holds the node's tunnel. */
  async held(nodeId: string): Promise<void> {
    if (!this.self) return;
    const at = this.clock.now();
    await this.database.db
      .insert(agentTunnels)
      .values({ nodeId, replicaUrl: this.self, connectedAt: at })
      .onConflictDoUpdate({ target: agentTunnels.nodeId, set: { replicaUrl: this.self, connectedAt: at } });
    this.holders.delete(nodeId);
  }

  /** The node's tunnel here closed: forget it, unless another replica holds it by now. */
  async released(nodeId: string): Promise<void> {
    if (!this.self) return;
    await this.database.db.delete(agentTunnels).where(and(eq(agentTunnels.nodeId, nodeId), eq(agentTunnels.replicaUrl, this.self)));
    this.holders.delete(nodeId);
  }

  /** The internal URL of the other replica holding the node's tunnel (read at most once a second per node), or null. */
  holderOf(nodeId: string): Promise<string | null> {
    if (!this.self) return Promise.resolve(null);
    const now = performance.now();
    const hit = this.holders.get(nodeId);
    if (hit && now - hit.at < 1000) return hit.value;
    const value = this.database.db
      .select({ replicaUrl: agentTunnels.replicaUrl })
      .from(agentTunnels)
      .where(eq(agentTunnels.nodeId, nodeId))
      .then(([row]) => (row && row.replicaUrl !== this.self ? row.replicaUrl : null));
    this.holders.set(nodeId, { at: now, value });
    value.catch(() => this.holders.delete(nodeId));
    return value;
  }

  /** A token that lets `replicaUrl` serve one request for `jobId` without the client's credential. */
  tokenFor(replicaUrl: string, jobId: string): string {
    const key = this.keys.current();
    const now = Math.floor(this.clock.now().getTime() / 1000);
    const input = `${b64(JSON.stringify({ alg: 'EdDSA', kid: key.kid, typ: tokenType }))}.${b64(JSON.stringify({ iss: this.issuer, aud: `replica:${replicaUrl}`, sub: jobId, iat: now, exp: now + lifeSeconds }))}`;
    return `${input}.${sign(null, Buffer.from(input), key.privateKey).toString('base64url')}`;
  }

  /** Whether a forwarded request's token was made for this replica and this job, by a key of ours, and is fresh. */
  accepts(token: string, jobId: string): boolean {
    if (!this.self) return false;
    const [h, p, s] = token.split('.');
    if (!h || !p || !s) return false;
    try {
      const header = JSON.parse(Buffer.from(h, 'base64url').toString()) as { alg?: string; kid?: string; typ?: string };
      if (header.alg !== 'EdDSA' || header.typ !== tokenType || !header.kid) return false;
      const key = this.publicKey(header.kid);
      if (!key || !verify(null, Buffer.from(`${h}.${p}`), key, Buffer.from(s, 'base64url'))) return false;
      const claims = JSON.parse(Buffer.from(p, 'base64url').toString()) as { iss?: string; aud?: string; sub?: string; exp?: number };
      const now = this.clock.now().getTime() / 1000;
      return claims.iss === this.issuer && claims.aud === `replica:${this.self}` && claims.sub === jobId && typeof claims.exp === 'number' && claims.exp > now;
    } catch {
      return false;
    }
  }

  private publicKey(kid: string): KeyObject | null {
    let key = this.publicKeys.get(kid);
    if (!key) {
      const jwk = this.keys.jwks().keys.find((k) => k.kid === kid);
      if (!jwk) return null;
      key = createPublicKey({ key: jwk as import('node:crypto').JsonWebKey, format: 'jwk' });
      this.publicKeys.set(kid, key);
    }
    return key;
  }
}
