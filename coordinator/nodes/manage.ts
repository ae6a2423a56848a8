import { and, asc, eq, gt, gte, inArray, lte, ne, sql, type SQL } from 'drizzle-orm';
import type { HostInfo, MetricsSample, MigPlacement } from '../../shared/hardware.ts';
import { fromMicros, toMicros } from '../../shared/money.ts';
import { metricsRetentionDays, type Node, type NodeMetricsSeries, type NodeStatus, type UpdateNode } from '../../shared/nodes.ts';
import { toNumber, type Db, type DbOrTx } from '../db/open.ts';
import { gpus, jobs, nodeMetrics, nodes } from '../db/schema/index.ts';
import { ApiError, notFound } from '../errors.ts';

export type NodeRow = typeof nodes.$inferSelect;
export type GpuRow = typeof gpus.$inferSelect;

const iso = (d: Date | null) => (d ? d.toISOString() : null);

/** The one mapping from a node's rows to the API's shape. */
export function toApiNode(row: NodeRow, gpuRows: GpuRow[]): Node {
  return {
    id: row.id,
    name: row.name,
    status: row.status,
    draining: row.draining,
    labels: row.labels,
    region: row.region,
    priceGpuHour: fromMicros(row.priceGpuHourMicros),
    priceCpuHour: fromMicros(row.priceCpuHourMicros),
    agentVersion: row.agentVersion,
    capacity: { cpu: row.cpuMillis / 1000, memoryMb: row.memoryMb, diskMb: row.diskMb },
    allocated: { cpu: row.allocatedCpuMillis / 1000, memoryMb: row.allocatedMemoryMb, diskMb: row.allocatedDiskMb },
    host: (row.host as HostInfo | null) ?? null,
    gpus: gpuRows
      .sort((a, b) => a.index - b.index || a.id.localeCompare(b.id))
      .map((g) => ({
        id: g.id,
        index: g.index,
        uuid: g.uuid,
        model: g.model,
        memoryMb: g.memoryMb,
        driverVersion: g.driverVersion,
        cudaVersion: g.cudaVersion,
        pciBusId: g.pciBusId,
        mig: (g.mig as MigPlacement | null) ?? null,
        jobId: g.jobId,
        metrics: {
          utilizationPct: g.utilizationPct,
          memoryUsedMb: g.memoryUsedMb,
          temperatureC: g.temperatureC,
          powerW: g.powerW,
        },
      })),
    lastHeartbeatAt: iso(row.lastHeartbeatAt),
    metrics: (row.metrics as MetricsSample | null) ?? null,
    createdAt: row.createdAt.toISOString(),
  };
}

async function withGpus(db: DbOrTx, rows: NodeRow[]): Promise<Node[]> {
  if (!rows.length) return [];
  const all = await db
    .select()
    .from(gpus)
    .where(inArray(gpus.nodeId, rows.map((r) => r.id)));
  return rows.map((r) => toApiNode(r, all.filter((g) => g.nodeId === r.id)));
}

/** A node as its provider sees it; another provider's node is not found. */
async function ownNodeRow(db: DbOrTx, accountId: string, nodeId: string, lock = false): Promise<NodeRow> {
  const q = db
    .select()
    .from(nodes)
    .where(and(eq(nodes.id, nodeId), eq(nodes.accountId, accountId)));
  const [row] = await (lock ? q.for('update') : q);
  if (!row) throw notFound('node');
  return row;
}

export async function getOwnNode(db: DbOrTx, accountId: string, nodeId: string): Promise<Node> {
  const [node] = await withGpus(db, [await ownNodeRow(db, accountId, nodeId)]);
  return node!;
}

/** The provider's nodes, oldest first; retired ones only when asked for by status. */
export async function listOwnNodes(
  db: DbOrTx,
  accountId: string,
  opts: { status?: NodeStatus | undefined; limit: number; cursor?: string | undefined },
): Promise<{ items: Node[]; nextCursor: string | null }> {
  const where: SQL[] = [eq(nodes.accountId, accountId)];
  where.push(opts.status ? eq(nodes.status, opts.status) : ne(nodes.status, 'retired'));
  if (opts.cursor) where.push(gt(nodes.id, opts.cursor));
  const rows = await db
    .select()
    .from(nodes)
    .where(and(...where))
    .orderBy(asc(nodes.id))
    .limit(opts.limit + 1);
  const page = rows.slice(0, opts.limit);
  return { items: await withGpus(db, page), nextCursor: rows.length > opts.limit ? page[page.length - 1]!.id : null };
}

export async function updateNode(db: Db, accountId: string, nodeId: string, patch: UpdateNode): Promise<Node> {
  return db.transaction(async (tx) => {
    const row = await ownNodeRow(tx, accountId, nodeId, true);
    if (row.status === 'retired') throw new ApiError('conflict', 'the node is retired');
    await tx
      .update(nodes)
      .set({
        ...(patch.name !== undefined ? { name: patch.name } : {}),
        ...(patch.priceGpuHour !== undefined ? { priceGpuHourMicros: toMicros(patch.priceGpuHour) } : {}),
        ...(patch.priceCpuHour !== undefined ? { priceCpuHourMicros: toMicros(patch.priceCpuHour) } : {}),
        ...(patch.labels !== undefined ? { labels: patch.labels } : {}),
        ...(patch.region !== undefined ? { region: patch.region } : {}),
      })
      .where(eq(nodes.id, nodeId));
    return getOwnNode(tx, accountId, nodeId);
  });
}

/**
 * Retires a node that runs no job: it takes no more work, its agent's tokens are refused, and
 * its GPUs may join the pool again under another node.
 */
export async function retireNode(db: Db, accountId: string, nodeId: string): Promise<Node> {
  return db.transaction(async (tx) => {
    const row = await ownNodeRow(tx, accountId, nodeId, true);
    if (row.status !== 'retired') {
      const [live] = await tx
        .select({ n: sql<unknown>`count(*)` })
        .from(jobs)
        .where(and(eq(jobs.nodeId, nodeId), inArray(jobs.status, ['leased', 'running'])));
      const n = toNumber(live?.n);
      if (n > 0) throw new ApiError('conflict', `the node runs ${n} job${n === 1 ? '' : 's'}; retire it once they end`);
      await tx.update(nodes).set({ status: 'retired' }).where(eq(nodes.id, nodeId));
    }
    return getOwnNode(tx, accountId, nodeId);
  });
}

const maxRangeMs = metricsRetentionDays * 86_400_000;

/** The node's per-minute samples in [since, until]; by default the last hour. */
export async function nodeMetricsSeries(
  db: DbOrTx,
  accountId: string,
  nodeId: string,
  range: { since?: string | undefined; until?: string | undefined },
  now: Date,
): Promise<NodeMetricsSeries> {
  await ownNodeRow(db, accountId, nodeId);
  const until = range.until ? new Date(range.until) : now;
  const since = range.since ? new Date(range.since) : new Date(until.getTime() - 3_600_000);
  if (since.getTime() > until.getTime()) {
    throw new ApiError('validation', 'since is after until', [{ path: 'since', message: 'must not be after until' }]);
  }
  if (until.getTime() - since.getTime() > maxRangeMs) {
    throw new ApiError('validation', `a range covers at most ${metricsRetentionDays} days`, [
      { path: 'since', message: `at most ${metricsRetentionDays} days before until` },
    ]);
  }
  const rows = await db
    .select({ at: nodeMetrics.at, sample: nodeMetrics.sample })
    .from(nodeMetrics)
    .where(and(eq(nodeMetrics.nodeId, nodeId), gte(nodeMetrics.at, since), lte(nodeMetrics.at, until)))
    .orderBy(asc(nodeMetrics.at));
  return {
    nodeId,
    since: since.toISOString(),
    until: until.toISOString(),
    items: rows.map((r) => ({ at: r.at.toISOString(), sample: r.sample as MetricsSample })),
  };
}
