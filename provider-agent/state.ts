import { chmod, mkdir, open, readFile, rename } from 'node:fs/promises';
import { homedir } from 'node:os';
import { dirname, join } from 'node:path';
import { exportJWK, generateKeyPair, importJWK, type CryptoKey, type JWK } from 'jose';
import { z } from 'zod';
import { RegistryHost } from '../shared/images.ts';

// What the agent keeps on disk between runs (its state dir): its key pair and which node it is.
// Everything it needs after a restart is here; nothing here is shared with anyone.

/** --state-dir, else GANTRY_AGENT_STATE_DIR, else ~/.gantry-agent. */
export function resolveStateDir(flag: string | undefined, env: Record<string, string | undefined> = process.env): string {
  return flag || env.GANTRY_AGENT_STATE_DIR || join(homedir(), '.gantry-agent');
}

export const NodeState = z
  .object({
    nodeId: z.string().min(1),
    name: z.string(),
    coordinatorUrl: z.string().min(1),
    /** The audience of this agent's tokens and the issuer it expects on leases. */
    coordinatorName: z.string().min(1),
    /** The provider allowed plain http:// to a non-loopback coordinator at join. */
    insecureHttp: z.boolean().default(false),
    /** The registries given at join (--allow-registry): what `run` pulls from unless told otherwise. */
    allowedRegistries: z.array(RegistryHost).min(1).max(64).optional(),
    enrolledAt: z.string(),
  })
  .strict();
export type NodeState = z.infer<typeof NodeState>;

const PrivateJwk = z.object({ kty: z.literal('OKP'), crv: z.literal('Ed25519'), x: z.string(), d: z.string() }).loose();

export class StateError extends Error {}

export interface AgentKey {
  privateKey: CryptoKey;
  publicJwk: JWK;
}

export class AgentState {
  readonly nodeFile: string;
  readonly keyFile: string;
  /** Finish reports not yet taken by the coordinator (leases/report-store.ts). */
  readonly reportsDir: string;

  constructor(readonly dir: string) {
    this.nodeFile = join(dir, 'node.json');
    this.keyFile = join(dir, 'key.json');
    this.reportsDir = join(dir, 'reports');
  }

  /** The node this machine is enrolled as, or null before the first join. */
  async readNode(): Promise<NodeState | null> {
    const text = await readIfExists(this.nodeFile);
    if (text === null) return null;
    const parsed = NodeState.safeParse(safeJson(text));
    if (!parsed.success) throw new StateError(`${this.nodeFile} is damaged (${parsed.error.issues[0]?.message}); remove it and join again`);
    return parsed.data;
  }

  async writeNode(state: NodeState): Promise<void> {
    await writePrivateFile(this.nodeFile, `${JSON.stringify(state, null, 2)}\n`);
  }

  /** The agent's Ed25519 key pair: made on the first join, read back afterwards. */
  async loadOrCreateKey(): Promise<AgentKey> {
    const existing = await this.loadKey();
    if (existing) return existing;
    const { privateKey, publicKey } = await generateKeyPair('EdDSA', { crv: 'Ed25519', extractable: true });
    const jwk = await exportJWK(privateKey);
    await writePrivateFile(this.keyFile, `${JSON.stringify({ ...jwk, alg: 'EdDSA' }, null, 2)}\n`);
    return { privateKey, publicJwk: await exportJWK(publicKey) };
  }

  async loadKey(): Promise<AgentKey | null> {
    const text = await readIfExists(this.keyFile);
    if (text === null) return null;
    const parsed = PrivateJwk.safeParse(safeJson(text));
    if (!parsed.success) throw new StateError(`${this.keyFile} is not an Ed25519 private key`);
    const { kty, crv, x, d } = parsed.data;
    const privateKey = (await importJWK({ kty, crv, x, d }, 'EdDSA')) as CryptoKey;
    return { privateKey, publicJwk: { kty, crv, x } };
  }
}

let tmpSeq = 0;

/**
 * Written whole or not at all (temp file, flushed to disk, renamed over the old one), readable by
 * its owner only, in a folder only its owner can enter: every file of the state dir.
 */
export async function writePrivateFile(file: string, text: string): Promise<void> {
  await mkdir(dirname(file), { recursive: true, mode: 0o700 });
  const tmp = `${file}.${process.pid}.${++tmpSeq}.tmp`;
  const fh = await open(tmp, 'w', 0o600);
  try {
    await fh.writeFile(text);
    await fh.sync();
  } finally {
    await fh.close();
  }
  await chmod(tmp, 0o600);
  await rename(tmp, file);
}

async function readIfExists(file: string): Promise<string | null> {
  try {
    return await readFile(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw new StateError(`cannot read ${file}: ${(err as Error).message}`);
  }
}

function safeJson(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return null;
  }
}
