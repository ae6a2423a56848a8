// Nodes and GPUs written straight into the tables, for tests of what the pool shows (stats,
// offers, dry-run, metrics) that need many shapes of node at once. Registration itself is
// tested through its API elsewhere.
import { newId } from '../../shared/ids.ts';
import { toMicros } from '../../shared/money.ts';
import type { Db } from '../../coordinator/db/open.ts';
import { gpus, nodes } from '../../coordinator/db/schema/index.ts';

export interface SeedGpu {
  model: string;
  memoryMb: number;
  /** A MIG device: its ids within the parent GPU. */
  mig?: { gpuInstanceId: number; computeInstanceId: number };
  jobId?: string;
  utilizationPct?: number;
  memoryUsedMb?: number;
  temperatureC?: number;
  powerW?: number;
  cudaVersion?: string;
}

export interface SeedNode {
  name?: string;
  status?: 'online' | 'offline' | 'retired';
  draining?: boolean;
  region?: string | null;
  labels?: Record<string, string>;
  cpu?: number;
  memoryMb?: number;
  allocatedCpu?: number;
  allocatedMemoryMb?: number;
  pricePerGpuHour?: number;
  pricePerCpuHour?: number;
  lastHeartbeatAt?: Date | null;
  jobsSucceeded?: number;
  jobsFailed?: number;
  leaseExpiries?: number;
  gpus?: SeedGpu[];
}

let seq = 0;

/** Inserts one node of a provider account with its GPUs; returns its id and its GPUs' ids. */
export async function seedNode(db: Db, accountId: string, n: SeedNode = {}): Promise<{ nodeId: string; gpuIds: string[] }> {
  const nodeId = newId('node');
  const k = ++seq;
  await db.insert(nodes).values({
    id: nodeId,
    accountId,
    name: n.name ?? `seed-${k}`,
    status: n.status ?? 'online',
    draining: n.draining ?? false,
    labels: n.labels ?? {},
    region: n.region === undefined ? 'eu-west' : n.region,
    publicKey: { kty: 'OKP', crv: 'Ed25519', x: `seed${k}` },
    agentVersion: 'seed',
    cpuMillis: Math.round((n.cpu ?? 16) * 1000),
    memoryMb: n.memoryMb ?? 65_536,
    diskMb: 500_000,
    allocatedCpuMillis: Math.round((n.allocatedCpu ?? 0) * 1000),
    allocatedMemoryMb: n.allocatedMemoryMb ?? 0,
    priceGpuHourMicros: toMicros(n.pricePerGpuHour ?? 2),
    priceCpuHourMicros: toMicros(n.pricePerCpuHour ?? 0),
    lastHeartbeatAt: n.lastHeartbeatAt === undefined ? new Date() : n.lastHeartbeatAt,
    jobsSucceeded: n.jobsSucceeded ?? 0,
    jobsFailed: n.jobsFailed ?? 0,
    leaseExpiries: n.leaseExpiries ?? 0,
  });
  const gpuIds: string[] = [];
  const list = n.gpus ?? [];
  if (list.length) {
    await db.insert(gpus).values(
      list.map((g, index) => {
        const uuid = `GPU-${nodeId.slice(5)}-${index}`;
        const id = g.mig ? `MIG-${uuid}-${g.mig.gpuInstanceId}-${g.mig.computeInstanceId}` : uuid;
        gpuIds.push(id);
        return {
          nodeId,
          id,
          index,
          uuid,
          model: g.model,
          memoryMb: g.memoryMb,
          driverVersion: '550.54.15',
          cudaVersion: g.cudaVersion ?? '12.4',
          mig: g.mig ?? null,
          jobId: g.jobId ?? null,
          utilizationPct: g.utilizationPct ?? null,
          memoryUsedMb: g.memoryUsedMb ?? null,
          temperatureC: g.temperatureC ?? null,
          powerW: g.powerW ?? null,
        };
      }),
    );
  }
  return { nodeId, gpuIds };
}

export const h100 = 'NVIDIA H100 80GB HBM3';
export const a100 = 'NVIDIA A100-SXM4-40GB';
export const gpusOf = (model: string, memoryMb: number, count: number, extra: Partial<SeedGpu> = {}): SeedGpu[] =>
  Array.from({ length: count }, () => ({ model, memoryMb, ...extra }));
