// The lease invariants, checked against the tables: no GPU in two live jobs, allocations equal
// the sum of the live jobs' resources and never exceed capacity, every job in exactly one state
// with fields that agree, and the events replay to each job's state. Used by the randomized test
// after every step and by the end-to-end fault tests after every fault.
import { expect } from 'vitest';
import { asc, gt } from 'drizzle-orm';
import type { Db, DbOrTx } from '../../coordinator/db/open.ts';
import { gpus, jobEvents, jobs, nodes } from '../../coordinator/db/schema/index.ts';
import { isTerminal, type JobStatus } from '../../shared/jobs.ts';

const live = new Set<JobStatus>(['leased', 'running']);

/** Checks every invariant; replays only the events added since its last call. */
export class InvariantChecker {
  /** Replayed so far (events are append-only): each check reads only the new ones. */
  private replay = new Map<string, JobStatus | null>();
  private lastEventId = 0;
  /** How many times each job went queued → leased: a placement is never made twice at once. */
  readonly placements = new Map<string, number>();

  /**
   * incremental: replay only events added since the last check. Only where one writer commits at
   * a time (the randomized test): with concurrent writers an event with a lower id can commit
   * after a higher one was seen, so every check replays them all.
   */
  constructor(private opts: { incremental?: boolean } = {}) {}

  async check(db: Db): Promise<void> {
    // One snapshot of all the tables: coordinators may be changing them as it reads.
    const read = await db.transaction((tx) => this.read(tx), { isolationLevel: 'repeatable read', accessMode: 'read only' });
    this.verify(read);
  }

  private async read(tx: DbOrTx) {
    const allJobs = await tx
      .select({ id: jobs.id, status: jobs.status, nodeId: jobs.nodeId, gpuIds: jobs.gpuIds, cpu: jobs.cpuMillis, mem: jobs.memoryMb, disk: jobs.diskMb, epoch: jobs.leaseEpoch, attempts: jobs.attempts, max: jobs.maxAttempts })
      .from(jobs);
    const allGpus = await tx.select({ nodeId: gpus.nodeId, id: gpus.id, jobId: gpus.jobId }).from(gpus);
    const allNodes = await tx.select().from(nodes);
    const events = await tx
      .select({ id: jobEvents.id, jobId: jobEvents.jobId, from: jobEvents.fromStatus, to: jobEvents.toStatus })
      .from(jobEvents)
      .where(gt(jobEvents.id, this.opts.incremental ? this.lastEventId : 0))
      .orderBy(asc(jobEvents.id));
    return { allJobs, allGpus, allNodes, events };
  }

  private verify({ allJobs, allGpus, allNodes, events }: Awaited<ReturnType<InvariantChecker['read']>>): void {
    if (!this.opts.incremental) {
      this.replay.clear();
      this.placements.clear();
    }
    const byJob = new Map(allJobs.map((j) => [j.id, j]));
    // No GPU in two live jobs; each held GPU row names a live job that lists it, on that job's node.
    const claimed = new Map<string, string>();
    for (const j of allJobs) {
      if (live.has(j.status)) {
        expect(j.nodeId, `live job ${j.id} has a node`).not.toBeNull();
        for (const g of j.gpuIds ?? []) {
          const key = `${j.nodeId}/${g}`;
          expect(claimed.get(key), `GPU ${key} in two live jobs`).toBeUndefined();
          claimed.set(key, j.id);
        }
      }
      // Every job in exactly one state, and its fields agree with it.
      if (j.status === 'queued') {
        expect(j.nodeId, `queued job ${j.id} is on no node`).toBeNull();
        expect(j.attempts).toBeLessThan(j.max);
      }
      expect(j.attempts).toBeLessThanOrEqual(j.max);
    }
    for (const g of allGpus) {
      if (g.jobId === null) continue;
      const j = byJob.get(g.jobId);
      expect(j && live.has(j.status), `GPU ${g.id} held by ${g.jobId}, which is ${j?.status}`).toBe(true);
      expect(j!.nodeId).toBe(g.nodeId);
      expect(claimed.get(`${g.nodeId}/${g.id}`)).toBe(g.jobId);
    }
    for (const [key, jobId] of claimed) {
      const [nodeId, id] = key.split('/') as [string, string];
      const row = allGpus.find((g) => g.nodeId === nodeId && g.id === id);
      // A vanished GPU takes its job back in the same transaction: a live job's GPUs all exist.
      expect(row?.jobId, `live job ${jobId} lists GPU ${key}`).toBe(jobId);
    }
    // Allocations equal the sum of the live jobs' resources and never exceed capacity.
    for (const n of allNodes) {
      const mine = allJobs.filter((j) => j.nodeId === n.id && live.has(j.status));
      expect(n.allocatedCpuMillis, `node ${n.id} CPU allocation`).toBe(mine.reduce((s, j) => s + j.cpu, 0));
      expect(n.allocatedMemoryMb, `node ${n.id} memory allocation`).toBe(mine.reduce((s, j) => s + j.mem, 0));
      expect(n.allocatedDiskMb, `node ${n.id} disk allocation`).toBe(mine.reduce((s, j) => s + j.disk, 0));
      expect(n.allocatedCpuMillis).toBeLessThanOrEqual(n.cpuMillis);
      expect(n.allocatedMemoryMb).toBeLessThanOrEqual(n.memoryMb);
    }
    // The events replay to each job's state.
    for (const e of events) {
      this.lastEventId = e.id;
      const prev = this.replay.has(e.jobId) ? this.replay.get(e.jobId)! : null;
      expect(e.from, `event of ${e.jobId} from ${e.from} after ${prev}`).toBe(prev);
      if (prev !== null && isTerminal(prev)) expect(e.to, `${e.jobId} left terminal ${prev}`).toBe(prev);
      if (e.from === 'queued' && e.to === 'leased') this.placements.set(e.jobId, (this.placements.get(e.jobId) ?? 0) + 1);
      this.replay.set(e.jobId, e.to as JobStatus);
    }
    for (const j of allJobs) expect(this.replay.get(j.id), `events of ${j.id} replay to ${j.status}`).toBe(j.status);
  }
}
