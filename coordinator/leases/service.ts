import { and, eq, inArray, sql } from 'drizzle-orm';
import type { LeaseGrant, LeaseHeartbeatExtras, LeaseRenewal, LeaseRef } from '../../shared/leases.ts';
import type { Clock } from '../clock.ts';
import type { Database, DbOrTx } from '../db/open.ts';
import { gpus, jobs, nodes } from '../db/schema/index.ts';
import type { HeartbeatHook } from '../deps.ts';
import { specsOf } from '../jobs/arrays.ts';
import { executeRows, liveOnNode, liveStatuses, ts } from '../jobs/transitions.ts';
import { billPeriod, type Billing } from '../ledger/leases.ts';
import type { SigningKeys } from './keys.ts';
import type { LeaseNotifier } from './notifier.ts';
import { leaseClaims, signLease, tokenNeedsRenewal } from './tokens.ts';

/** What a lease token is made from: read for a new grant and for a renewal alike. */
const leaseColumns = {
  id: jobs.id,
  leaseId: jobs.leaseId,
  leaseEpoch: jobs.leaseEpoch,
  gpuIds: jobs.gpuIds,
  cpuMillis: jobs.cpuMillis,
  memoryMb: jobs.memoryMb,
  specDigest: jobs.specDigest,
  leaseExpiresAt: jobs.leaseExpiresAt,
  taskIndex: jobs.taskIndex,
  taskCount: jobs.taskCount,
};

type LeaseRow = Pick<
  typeof jobs.$inferSelect,
  'id' | 'leaseId' | 'leaseEpoch' | 'gpuIds' | 'cpuMillis' | 'memoryMb' | 'specDigest' | 'leaseExpiresAt' | 'taskIndex' | 'taskCount'
>;

/** The lease side of the coordinator: handing leases to nodes, renewing them, signing their tokens. */
export class LeaseService implements HeartbeatHook {
  constructor(
    private database: Database,
    private clock: Clock,
    readonly keys: SigningKeys,
    readonly notifier: LeaseNotifier,
    private settings: { issuer: string; leaseTtlSeconds: number; billing?: Omit<Billing, 'leaseTtlSeconds'> },
  ) {}

  private get billing(): Billing {
    const b = this.settings.billing;
    return {
      leaseTtlSeconds: this.settings.leaseTtlSeconds,
      periodSeconds: b?.periodSeconds ?? Math.max(1, Math.floor(this.settings.leaseTtlSeconds / 2)),
      feeBasisPoints: b?.feeBasisPoints ?? 0,
    };
  }

  private sign(nodeId: string, row: LeaseRow, expiresAt: Date, at: Date): string {
    return signLease(
      this.keys.current(),
      leaseClaims({
        issuer: this.settings.issuer,
        nodeId,
        jobId: row.id,
        leaseId: row.leaseId ?? row.id,
        epoch: row.leaseEpoch,
        gpuIds: row.gpuIds ?? [],
        cpuMillis: row.cpuMillis,
        memoryMb: row.memoryMb,
        specDigest: row.specDigest,
        task: row.taskIndex !== null && row.taskCount !== null ? { index: row.taskIndex, count: row.taskCount } : null,
        issuedAt: at,
        expiresAt,
      }),
    );
  }

  /**
   * The leases a node has not picked up yet (`have` lists what it holds, as jobId.epoch), each
   * with a token signed now that expires with the lease. An expired one the sweeper has not
   * taken back yet is not handed out.
   */
  async undelivered(nodeId: string, have: ReadonlySet<string>): Promise<LeaseGrant[]> {
    const at = this.clock.now();
    const { db } = this.database;
    const rows = await db
      .select({
        ...leaseColumns,
        spec: jobs.spec,
        parentId: jobs.parentId,
      })
      .from(jobs)
      .where(and(eq(jobs.nodeId, nodeId), eq(jobs.status, 'leased')))
      .orderBy(jobs.leasedAt, jobs.id);
    const fresh = rows.filter((r) => !have.has(`${r.id}.${r.leaseEpoch}`) && r.leaseExpiresAt && r.leaseExpiresAt > at);
    if (!fresh.length) return [];
    const specs = await specsOf(db, fresh);
    const held = await db
      .select({ id: gpus.id, index: gpus.index, uuid: gpus.uuid, model: gpus.model, mig: gpus.mig, jobId: gpus.jobId })
      .from(gpus)
      .where(and(eq(gpus.nodeId, nodeId), inArray(gpus.jobId, fresh.map((r) => r.id))));
    const grants = fresh.map((r): LeaseGrant => {
      const expiresAt = r.leaseExpiresAt!;
      const ids = r.gpuIds ?? [];
      return {
        jobId: r.id,
        leaseId: r.leaseId ?? r.id,
        epoch: r.leaseEpoch,
        token: this.sign(nodeId, r, expiresAt, at),
        spec: specs.get(r.id)!,
        gpus: ids.flatMap((id) => {
          const g = held.find((h) => h.id === id && h.jobId === r.id);
          return g ? [{ id: g.id, index: g.index, uuid: g.uuid, model: g.model, mig: g.mig ?? null }] : [];
        }),
        cpuMillis: r.cpuMillis,
        memoryMb: r.memoryMb,
        expiresAt: expiresAt.toISOString(),
        expiresInMs: expiresAt.getTime() - at.getTime(),
      };
    });
    // Remembered, so that heartbeats re-sign only when this token nears its end.
    const rowsSql = fresh.map((r) => sql`(${r.id}::text, ${r.leaseEpoch}::int, ${r.leaseExpiresAt!.toISOString()}::timestamptz)`);
    await db.execute(
      sql`update ${jobs} set lease_token_expires_at = v.exp from (values ${sql.join(rowsSql, sql`, `)}) as v(id, epoch, exp)
          where ${jobs}.id = v.id and ${jobs}.lease_epoch = v.epoch`,
    );
    return grants;
  }

  /**
   * The lease side of a heartbeat, in the heartbeat's transaction: renews the lease of every
   * job the node reports holding at its current epoch (starting or running), with a fresh token
   * only where the one handed out nears its end; names the cancelled jobs it must stop, the ones
   * it holds at a stale epoch, and whether the node is draining.
   */
  async onHeartbeat(tx: DbOrTx, nodeId: string, report: { jobs: LeaseRef[]; draining?: boolean }, at: Date): Promise<LeaseHeartbeatExtras & Record<string, unknown>> {
    return this.renew(tx, nodeId, report.jobs, at, report.draining);
  }

  /** An idle node's heartbeat (no job, the drain flag given) costs no query here. */
  async renew(tx: DbOrTx, nodeId: string, reported: LeaseRef[], at: Date, knownDraining?: boolean): Promise<LeaseHeartbeatExtras> {
    const node =
      knownDraining === undefined ? (await tx.select({ draining: nodes.draining }).from(nodes).where(eq(nodes.id, nodeId)))[0] : { draining: knownDraining };
    const held = reported.length
      ? await tx
          .select({
            ...leaseColumns,
            leaseTokenExpiresAt: jobs.leaseTokenExpiresAt,
            cancelRequestedAt: jobs.cancelRequestedAt,
            heldUntil: jobs.heldUntil,
            billAt: jobs.billAt,
          })
          .from(jobs)
          .where(and(liveOnNode(nodeId), inArray(jobs.id, reported.map((j) => j.jobId))))
      : [];
    const byId = new Map(held.map((h) => [h.id, h]));
    // Leases whose billing period is due: post it and hold the next (job row locked, then the ledger).
    for (const h of held) {
      if (!h.billAt || h.billAt > at || !reported.some((r) => r.jobId === h.id && r.epoch === h.leaseEpoch)) continue;
      const [job] = await tx.select().from(jobs).where(and(eq(jobs.id, h.id), eq(jobs.leaseEpoch, h.leaseEpoch), liveOnNode(nodeId))).for('update');
      if (!job || !job.billAt || job.billAt > at) continue;
      h.heldUntil = await billPeriod(tx, job, at, this.billing);
    }
    const ttlEnd = new Date(at.getTime() + this.settings.leaseTtlSeconds * 1000);
    const leases: LeaseRenewal[] = [];
    const cancel: LeaseRef[] = [];
    const revoked: LeaseRef[] = [];
    const updates: ReturnType<typeof sql>[] = [];
    for (const r of reported) {
      const h = byId.get(r.jobId);
      if (!h || h.leaseEpoch !== r.epoch) {
        revoked.push(r);
        continue;
      }
      // Never past what the client's credit holds.
      const expiresAt = h.heldUntil && h.heldUntil < ttlEnd ? h.heldUntil : ttlEnd;
      const resign = tokenNeedsRenewal(h.leaseTokenExpiresAt, at, this.settings.leaseTtlSeconds);
      leases.push({
        jobId: h.id,
        epoch: h.leaseEpoch,
        expiresAt: expiresAt.toISOString(),
        expiresInMs: expiresAt.getTime() - at.getTime(),
        ...(resign ? { token: this.sign(nodeId, h, expiresAt, at) } : {}),
      });
      if (h.cancelRequestedAt) cancel.push({ jobId: h.id, epoch: h.leaseEpoch });
      updates.push(sql`(${h.id}::text, ${h.leaseEpoch}::int, ${resign}::boolean, ${expiresAt.toISOString()}::timestamptz)`);
    }
    if (updates.length) {
      const renewed = await executeRows<{ id: string }>(
        tx,
        sql`update ${jobs} set lease_expires_at = v.exp, lease_seen_at = ${ts(at)},
              lease_token_expires_at = case when v.resign then v.exp else ${jobs}.lease_token_expires_at end
            from (values ${sql.join(updates, sql`, `)}) as v(id, epoch, resign, exp)
            where ${jobs}.id = v.id and ${jobs}.lease_epoch = v.epoch and ${jobs}.node_id = ${nodeId}
              and ${jobs}.status in (${sql.join(liveStatuses.map((s) => sql`${s}`), sql`, `)})
            returning ${jobs}.id`,
      );
      // A job that ended between the read and the update is not renewed: tell the agent to let go.
      const kept = new Set(renewed.map((r) => r.id));
      for (const l of leases.filter((l) => !kept.has(l.jobId))) revoked.push({ jobId: l.jobId, epoch: l.epoch });
      return { leases: leases.filter((l) => kept.has(l.jobId)), cancel: cancel.filter((c) => kept.has(c.jobId)), revoked, draining: node?.draining ?? false };
    }
    return { leases, cancel, revoked, draining: node?.draining ?? false };
  }
}
