import { and, eq, inArray, ne, sql } from 'drizzle-orm';
import type { GpuDevice, HardwareReport } from '../../shared/hardware.ts';
import { newId } from '../../shared/ids.ts';
import { toMicros } from '../../shared/money.ts';
import type { Heartbeat, HeartbeatAnswer, RegisterNode, RegisteredNode } from '../../shared/nodes.ts';
import type { DbOrTx, Tx } from '../db/open.ts';
import { gpus, nodes } from '../db/schema/index.ts';
import type { AppDeps } from '../deps.ts';
import { ApiError } from '../errors.ts';
import { topics } from '../signals.ts';
import { consumeEnrollmentToken } from './enrollment-tokens.ts';
import { requeueJobsOnGpus } from './requeue.ts';
import { runStatement } from './statements.ts';

type Deps = Pick<AppDeps, 'database' | 'log' | 'config' | 'signals' | 'heartbeatHook'>;
type NodeRow = typeof nodes.$inferSelect;
type GpuRow = typeof gpus.$inferSelect;

// Key space of the transaction locks taken on a GPU UUID while it is claimed (second key: hashtext(uuid)).
const gpuClaimLockSpace = 7_301_101;

function capacityOf(report: HardwareReport) {
  return {
    cpuMillis: report.host.cpuCores * 1000,
    memoryMb: report.host.memoryMb,
    diskMb: report.host.diskFreeMb,
  };
}

function gpuValues(nodeId: string, g: GpuDevice) {
  return {
    nodeId,
    id: g.id,
    index: g.index,
    uuid: g.uuid,
    model: g.model,
    memoryMb: g.memoryMb,
    driverVersion: g.driverVersion,
    cudaVersion: g.cudaVersion,
    pciBusId: g.pciBusId,
    mig: g.mig ? { index: g.mig.index, gpuInstanceId: g.mig.gpuInstanceId, computeInstanceId: g.mig.computeInstanceId } : null,
  };
}

interface GpuClaimConflict {
  /** The claiming GPU's id (in the report). */
  gpuId: string;
  uuid: string;
  /** Set where the claim is by (UUID, bus id): its node reports the UUID more than once. */
  pciBusId: string | null;
  nodeId: string;
  sameAccount: boolean;
  nodeName: string;
}

/** What a GPU claims: its UUID, and where its node reports that UUID on several GPUs, its bus id with it. */
interface GpuClaim {
  gpuId: string;
  uuid: string;
  pciBusId: string | null;
}

/**
 * One physical GPU belongs to one node, known by its UUID; GPUs that share a UUID (cloned VMs,
 * masked reports: the agent names them <uuid>/<bus id>) are known by (UUID, PCI bus id).
 */
function claimsOf(reported: GpuDevice[], claimed: GpuDevice[] = reported): GpuClaim[] {
  const wholeByUuid = new Map<string, number>();
  for (const g of reported) if (!g.mig) wholeByUuid.set(g.uuid, (wholeByUuid.get(g.uuid) ?? 0) + 1);
  return claimed.map((g) => ({
    gpuId: g.id,
    uuid: g.uuid,
    pciBusId: !g.mig && (wholeByUuid.get(g.uuid) ?? 0) > 1 ? g.pciBusId : null,
  }));
}

/**
 * Which of these claims another live (not retired) node already holds. Takes a transaction lock
 * on each UUID first, so two nodes claiming one GPU at once cannot both win: a marketplace must
 * not sell one GPU twice. A claim by (UUID, bus id) meets only a GPU of that UUID at that bus id
 * (or at none known).
 */
async function findClaimConflicts(tx: Tx, accountId: string, selfId: string | null, claims: GpuClaim[]): Promise<GpuClaimConflict[]> {
  const distinct = [...new Set(claims.map((c) => c.uuid))].sort();
  if (!distinct.length) return [];
  for (const uuid of distinct) {
    await tx.execute(sql`select pg_advisory_xact_lock(${gpuClaimLockSpace}, hashtext(${uuid}))`);
  }
  const held = await tx
    .selectDistinct({ uuid: gpus.uuid, pciBusId: gpus.pciBusId, nodeId: nodes.id, accountId: nodes.accountId, nodeName: nodes.name })
    .from(gpus)
    .innerJoin(nodes, eq(nodes.id, gpus.nodeId))
    .where(
      and(inArray(gpus.uuid, distinct), ne(nodes.status, 'retired'), selfId ? ne(nodes.id, selfId) : undefined),
    );
  const conflicts: GpuClaimConflict[] = [];
  for (const claim of claims) {
    const holder = held.find(
      (r) => r.uuid === claim.uuid && (claim.pciBusId === null || r.pciBusId === null || r.pciBusId === claim.pciBusId),
    );
    if (holder) conflicts.push({ ...claim, nodeId: holder.nodeId, sameAccount: holder.accountId === accountId, nodeName: holder.nodeName });
  }
  return conflicts;
}

function describeConflict(c: GpuClaimConflict): string {
  const gpu = c.pciBusId ? `GPU ${c.uuid} at ${c.pciBusId}` : `GPU ${c.uuid}`;
  // Another tenant's node is not named.
  return c.sameAccount
    ? `${gpu} already belongs to your node ${c.nodeId} (${c.nodeName}); retire that node first (DELETE /v1/nodes/${c.nodeId})`
    : `${gpu} is already registered by another node`;
}

/** Registers a machine as a node of the token's provider, with its GPUs, in one transaction. */
export async function registerNode(deps: Deps, req: RegisterNode, at: Date): Promise<RegisteredNode> {
  const nodeId = newId('node', at.getTime());
  const name = req.name ?? (req.hardware.host.hostname.slice(0, 128) || nodeId);
  const result = await deps.database.db.transaction(async (tx) => {
    const token = await consumeEnrollmentToken(tx, req.token, at);
    const conflicts = await findClaimConflicts(tx, token.accountId, null, claimsOf(req.hardware.gpus));
    if (conflicts.length) {
      deps.log.warn('gpu claimed twice: registration refused', {
        accountId: token.accountId,
        enrollmentTokenId: token.tokenId,
        conflicts: conflicts.map((c) => ({ uuid: c.uuid, heldBy: c.nodeId })),
      });
      throw new ApiError('conflict', describeConflict(conflicts[0]!));
    }
    await tx.insert(nodes).values({
      id: nodeId,
      accountId: token.accountId,
      name,
      status: 'online',
      labels: { ...token.labels, ...req.labels },
      region: req.region ?? null,
      publicKey: { kty: req.publicKey.kty, crv: req.publicKey.crv, x: req.publicKey.x },
      agentVersion: req.agentVersion ?? null,
      host: req.hardware.host as Record<string, unknown>,
      runtime: req.hardware.host.containerRuntime,
      ...capacityOf(req.hardware),
      priceGpuHourMicros: toMicros(req.priceGpuHour ?? 0),
      priceCpuHourMicros: toMicros(req.priceCpuHour ?? 0),
      lastHeartbeatAt: at,
      createdAt: at,
    });
    if (req.hardware.gpus.length) await tx.insert(gpus).values(req.hardware.gpus.map((g) => gpuValues(nodeId, g)));
    return { accountId: token.accountId };
  });
  deps.log.info('node registered', { nodeId, accountId: result.accountId, name, gpus: req.hardware.gpus.length });
  deps.signals.emit(topics.nodeChanged, nodeId);
  return { nodeId, name, coordinatorName: deps.config.name, nodeTtlSeconds: deps.config.nodeTtlSeconds };
}

interface HardwareChange {
  added: string[];
  removed: string[];
  changed: string[];
  requeued: string[];
  refused: string[];
}

const sameGpu = (row: GpuRow, g: GpuDevice) => {
  const v = gpuValues(row.nodeId, g);
  return (
    row.index === v.index &&
    row.uuid === v.uuid &&
    row.model === v.model &&
    row.memoryMb === v.memoryMb &&
    row.driverVersion === v.driverVersion &&
    row.cudaVersion === v.cudaVersion &&
    row.pciBusId === v.pciBusId &&
    JSON.stringify(row.mig) === JSON.stringify(v.mig)
  );
};

/**
 * A re-reported hardware inventory: the node's capacity and GPU list follow it. A GPU that
 * vanished while a job held it takes that job back to the queue; a new GPU another node holds is
 * left out (and logged).
 */
async function applyHardware(deps: Deps, tx: Tx, node: NodeRow, report: HardwareReport, at: Date): Promise<HardwareChange> {
  const current = await tx.select().from(gpus).where(eq(gpus.nodeId, node.id));
  const byId = new Map(current.map((r) => [r.id, r]));
  const reported = new Map(report.gpus.map((g) => [g.id, g]));
  const change: HardwareChange = { added: [], removed: [], changed: [], requeued: [], refused: [] };

  const removed = current.filter((r) => !reported.has(r.id)).map((r) => r.id);
  if (removed.length) {
    change.requeued = await requeueJobsOnGpus(tx, node.id, removed, 'a GPU it held vanished from its node', at);
    await tx.delete(gpus).where(and(eq(gpus.nodeId, node.id), inArray(gpus.id, removed)));
    change.removed = removed;
  }

  const fresh = report.gpus.filter((g) => !byId.has(g.id));
  const conflicts = await findClaimConflicts(tx, node.accountId, node.id, claimsOf(report.gpus, fresh));
  const refused = new Set(conflicts.map((c) => c.gpuId));
  if (conflicts.length) {
    deps.log.warn('gpu claimed twice: left out of the node', {
      nodeId: node.id,
      conflicts: conflicts.map((c) => ({ uuid: c.uuid, heldBy: c.nodeId })),
    });
  }
  const toInsert = fresh.filter((g) => !refused.has(g.id));
  change.refused = conflicts.map(describeConflict);
  if (toInsert.length) await tx.insert(gpus).values(toInsert.map((g) => gpuValues(node.id, g)));
  change.added = toInsert.map((g) => g.id);

  for (const row of current) {
    const g = reported.get(row.id);
    if (!g || sameGpu(row, g)) continue;
    const { nodeId: _n, id: _i, ...values } = gpuValues(node.id, g);
    await tx.update(gpus).set(values).where(and(eq(gpus.nodeId, node.id), eq(gpus.id, row.id)));
    change.changed.push(row.id);
  }

  // Capacity follows the report; what running jobs already hold stays allocated, so capacity
  // never drops below it (the CHECK allocated <= capacity holds) and nothing new fits meanwhile.
  const cap = capacityOf(report);
  await tx
    .update(nodes)
    .set({
      cpuMillis: sql`greatest(${cap.cpuMillis}, ${nodes.allocatedCpuMillis})`,
      memoryMb: sql`greatest(${cap.memoryMb}, ${nodes.allocatedMemoryMb})`,
      diskMb: cap.diskMb,
      host: report.host as Record<string, unknown>,
      runtime: report.host.containerRuntime,
    })
    .where(eq(nodes.id, node.id));
  return change;
}

interface BeatRow {
  prev_status: string;
  draining: boolean;
  takes_work_changed: boolean;
  sampled: number;
  uuids: string[] | string | null;
}

/** postgres.js gives text[] as an array; some paths give PostgreSQL's '{a,b}' text. */
function textArray(v: BeatRow['uuids']): string[] {
  if (Array.isArray(v)) return v;
  if (!v || v === '{}') return [];
  return v.replace(/^\{|\}$/g, '').split(',').map((s) => s.replace(/^"|"$/g, ''));
}

/**
 * The hot path of a heartbeat, one statement: lock the node, mark it alive, store the latest
 * figures on it and on its GPUs (rows whose figures did not change are not rewritten), and write
 * the minute's sample only on the first heartbeat of the node's minute (upserted on (node_id, at), so two
 * replicas racing write one row). PostgreSQL runs every data-modifying CTE once, referenced or not.
 * $1 node id, $2 time, $3 the metrics sample (JSON), $4 agent version, $5 per-GPU figures (JSON),
 * $6 whether the agent takes work ('true'/'false', null: unchanged).
 */
const heartbeatStatement = `
  with prev as (
    select id, status, last_heartbeat_at, metrics is null as unsampled, takes_work
    from nodes where id = $1::text and status <> 'retired' for update
  ), n as (
    update nodes set status = 'online', last_heartbeat_at = $2::text::timestamptz, metrics = $3::text::jsonb,
      agent_version = coalesce($4::text, nodes.agent_version), takes_work = coalesce($6::text::boolean, nodes.takes_work)
    from prev where nodes.id = prev.id
    returning prev.status as prev_status, prev.last_heartbeat_at as prev_at, prev.unsampled, nodes.draining,
      prev.takes_work is distinct from nodes.takes_work as takes_work_changed
  ), g as (
    update gpus set utilization_pct = v.u, memory_used_mb = v.m, temperature_c = v.t, power_w = v.p
    from jsonb_to_recordset($5::text::jsonb) as v(uuid text, u int, m int, t int, p int)
    where gpus.node_id = $1::text and gpus.uuid = v.uuid and exists (select 1 from n)
      and (gpus.utilization_pct, gpus.memory_used_mb, gpus.temperature_c, gpus.power_w) is distinct from (v.u, v.m, v.t, v.p)
    returning 1
  ), s as (
    insert into node_metrics (node_id, at, sample)
    select $1::text, date_trunc('minute', $2::text::timestamptz), $3::text::jsonb from n
    -- Each node's minute starts at its own second (from its id), so 10,000 nodes do not all
    -- write their sample in the first seconds of the same minute.
    where n.unsampled or date_trunc('minute', n.prev_at - make_interval(secs => abs(hashtext($1::text)) % 60))
      <> date_trunc('minute', $2::text::timestamptz - make_interval(secs => abs(hashtext($1::text)) % 60))
    on conflict (node_id, at) do update set sample = excluded.sample
    returning 1
  )
  select n.prev_status, n.draining, n.takes_work_changed,
    (select count(*)::int from s) as sampled,
    (select coalesce(array_agg(distinct uuid), '{}') from gpus where node_id = $1::text) as uuids
  from n`;

/**
 * The same for a node that holds no job, as a statement of its own: its commit does not wait for
 * the disk (a crash of PostgreSQL can lose the last few hundred ms of liveness and metrics, which
 * the next heartbeats restate), so a connection is held for the statement and no fsync.
 */
const idleHeartbeatStatement = `${heartbeatStatement}, (select set_config('synchronous_commit', 'off', true)) as async_commit`;

const intOrNull = (n: number | null | undefined) => (n === null || n === undefined ? null : Math.round(n));

/**
 * One heartbeat: liveness, latest metrics on the node and its GPUs, one node_metrics row per
 * node per minute, the hardware when re-reported, and the lease side's answer through the
 * heartbeat hook. A node that holds jobs or re-reports hardware gets one transaction for all of
 * it; an idle one (most of a pool, most of the time) is one prepared statement and no
 * transaction around it: BEGIN and COMMIT would triple its cost, and there is nothing to renew.
 */
export async function ingestHeartbeat(deps: Deps, nodeId: string, hb: Heartbeat, at: Date): Promise<HeartbeatAnswer> {
  const atIso = at.toISOString();
  const params = [
    nodeId,
    atIso,
    JSON.stringify(hb.metrics),
    hb.agentVersion ?? null,
    JSON.stringify(
      hb.metrics.gpus.map((g) => ({
        uuid: g.id,
        u: intOrNull(g.utilizationPct),
        m: intOrNull(g.memoryUsedMb),
        t: intOrNull(g.temperatureC),
        p: intOrNull(g.powerW),
      })),
    ),
    hb.takesWork === undefined ? null : String(hb.takesWork),
  ];
  let change: HardwareChange | null = null;
  let prevStatus = 'online';
  let takesWorkChanged = false;
  const beat = async (q: DbOrTx, statement: string) => {
    const [row] = await runStatement<BeatRow>(deps.database, q, statement, params);
    if (!row) throw new ApiError('unauthenticated', 'this node was retired; join it again to serve');
    prevStatus = row.prev_status;
    takesWorkChanged = row.takes_work_changed === true;
    const extras = await deps.heartbeatHook.onHeartbeat(q, nodeId, { jobs: hb.jobs, draining: row.draining }, at);
    const known = new Set(textArray(row.uuids));
    const sampled = new Set(hb.metrics.gpus.map((g) => g.id));
    const hardwareWanted = !hb.hardware && (known.size !== sampled.size || [...sampled].some((u) => !known.has(u)));
    return {
      ...extras,
      nodeId,
      status: 'online' as const,
      receivedAt: atIso,
      hardwareWanted,
      warnings: (change as HardwareChange | null)?.refused ?? [],
    };
  };
  const answer =
    !hb.hardware && hb.jobs.length === 0
      ? await beat(deps.database.heartbeats, idleHeartbeatStatement)
      : await deps.database.heartbeats.transaction(async (tx) => {
          if (hb.hardware) {
            const [node] = await tx.select().from(nodes).where(eq(nodes.id, nodeId)).for('update');
            if (!node || node.status === 'retired') throw new ApiError('unauthenticated', 'this node was retired; join it again to serve');
            change = await applyHardware(deps, tx, node, hb.hardware, at);
          }
          return beat(tx, heartbeatStatement);
        });
  const c = change as HardwareChange | null;
  if (c && (c.added.length || c.removed.length || c.changed.length || c.refused.length)) {
    deps.log.info('node hardware changed', { nodeId, added: c.added, removed: c.removed, changed: c.changed, requeued: c.requeued });
  }
  if (prevStatus === 'offline') deps.log.info('node online', { nodeId });
  if (prevStatus === 'offline' || takesWorkChanged || (c && (c.added.length || c.removed.length || c.changed.length || c.requeued.length))) {
    deps.signals.emit(topics.nodeChanged, nodeId);
  }
  return answer;
}
