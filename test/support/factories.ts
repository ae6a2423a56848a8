// Nodes with GPUs and a real agent key pair, written straight into the tables, for the
// scheduler and lease tests (registration has its own tests through its API). Defaults make a
// node that fits small jobs; each test names what it cares about.
import { exportJWK, generateKeyPair, SignJWT } from 'jose';
import { newId } from '../../shared/ids.ts';
import { toMicros } from '../../shared/money.ts';
import { ApiClient } from '../../shared/client.ts';
import type { DbOrTx } from '../../coordinator/db/open.ts';
import { accounts, gpus, nodes } from '../../coordinator/db/schema/index.ts';

export interface NodeSpec {
  accountId: string;
  name?: string;
  status?: 'online' | 'offline' | 'retired';
  draining?: boolean;
  labels?: Record<string, string>;
  region?: string | null;
  cpu?: number;
  memoryMb?: number;
  /** Free disk as reported (default 500,000 MB). */
  diskMb?: number;
  pricePerGpuHour?: number;
  pricePerCpuHour?: number;
  gpus?: { model: string; memoryMb?: number; cudaVersion?: string | null }[];
}

export interface TestAgent {
  nodeId: string;
  gpuIds: string[];
  /** A fresh agent token (EdDSA, sub = node, aud = the coordinator's name). */
  token(): Promise<string>;
  /** An ApiClient speaking as this agent. */
  api: ApiClient;
}

let seq = 0;

/** A provider account, straight into the table (no API key: agents speak with their own tokens). */
export async function insertProvider(db: DbOrTx, name = `provider-${++seq}`): Promise<string> {
  const id = newId('account');
  await db.insert(accounts).values({ id, name, kind: 'provider' });
  return id;
}

/** A node with its GPUs (ids like GPU-<uuid>) and a key pair; `audience` is the coordinator's name. */
export async function insertNode(db: DbOrTx, spec: NodeSpec, opts: { audience: string; baseUrl?: string }): Promise<TestAgent> {
  const { publicKey, privateKey } = await generateKeyPair('EdDSA', { crv: 'Ed25519', extractable: true });
  const nodeId = newId('node');
  const k = ++seq;
  await db.insert(nodes).values({
    id: nodeId,
    accountId: spec.accountId,
    name: spec.name ?? `node-${k}`,
    status: spec.status ?? 'online',
    draining: spec.draining ?? false,
    labels: spec.labels ?? {},
    region: spec.region ?? null,
    publicKey: (await exportJWK(publicKey)) as Record<string, string>,
    agentVersion: 'test',
    cpuMillis: Math.round((spec.cpu ?? 16) * 1000),
    memoryMb: spec.memoryMb ?? 65_536,
    diskMb: spec.diskMb ?? 500_000,
    priceGpuHourMicros: toMicros(spec.pricePerGpuHour ?? 0),
    priceCpuHourMicros: toMicros(spec.pricePerCpuHour ?? 0),
    lastHeartbeatAt: new Date(),
  });
  const gpuIds: string[] = [];
  const list = spec.gpus ?? [];
  if (list.length) {
    const rows = list.map((g, index) => {
      const uuid = `GPU-${crypto.randomUUID()}`;
      gpuIds.push(uuid);
      return {
        nodeId,
        id: uuid,
        index,
        uuid,
        model: g.model,
        memoryMb: g.memoryMb ?? 81_559,
        driverVersion: '550.54.15',
        cudaVersion: g.cudaVersion === undefined ? '12.4' : g.cudaVersion,
      };
    });
    await db.insert(gpus).values(rows);
  }
  const token = () =>
    new SignJWT({})
      .setProtectedHeader({ alg: 'EdDSA' })
      .setSubject(nodeId)
      .setAudience(opts.audience)
      .setIssuedAt()
      .setExpirationTime('50s')
      .sign(privateKey);
  return { nodeId, gpuIds, token, api: new ApiClient({ baseUrl: opts.baseUrl ?? 'http://127.0.0.1:1', token }) };
}

/** A job spec with small defaults, for tests that care about one field. */
export function jobSpec(over: Record<string, unknown> = {}, resources: Record<string, unknown> = {}) {
  return {
    name: 'test-job',
    image: 'busybox:latest',
    command: ['true'],
    ...over,
    resources: { cpu: 1, memoryMb: 256, gpus: 0, ...resources },
  };
}
