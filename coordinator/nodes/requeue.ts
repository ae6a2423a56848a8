import { and, eq, inArray, sql } from 'drizzle-orm';
import type { JobStatus } from '../../shared/jobs.ts';
import type { Tx } from '../db/open.ts';
import { gpus, jobs, nodes } from '../db/schema/index.ts';
import { changeStatus } from '../jobs/lifecycle.ts';

const liveStatuses: JobStatus[] = ['leased', 'running'];

/**
 * Takes the jobs holding any of these GPUs of a node away from it, in the caller's transaction:
 * back to queued (or failed when no attempt is left), lease epoch + 1 so a late report from the
 * node is fenced off, and the node's CPU, memory and GPUs freed. Returns the jobs it moved.
 */
export async function requeueJobsOnGpus(tx: Tx, nodeId: string, gpuIds: string[], reason: string, at: Date): Promise<string[]> {
  if (!gpuIds.length) return [];
  const held = await tx
    .selectDistinct({ jobId: gpus.jobId })
    .from(gpus)
    .where(and(eq(gpus.nodeId, nodeId), inArray(gpus.id, gpuIds), sql`${gpus.jobId} is not null`));
  const moved: string[] = [];
  // A fixed order, so two transactions moving the same jobs cannot deadlock.
  for (const jobId of held.map((h) => h.jobId!).sort()) {
    const [job] = await tx
      .select()
      .from(jobs)
      .where(and(eq(jobs.id, jobId), eq(jobs.nodeId, nodeId), inArray(jobs.status, liveStatuses)))
      .for('update');
    if (job) {
      const outOfAttempts = job.attempts >= job.maxAttempts;
      const row = await changeStatus(
        tx,
        jobId,
        liveStatuses,
        outOfAttempts ? 'failed' : 'queued',
        reason,
        {
          nodeId: null,
          gpuIds: null,
          leaseId: null,
          leaseExpiresAt: null,
          leaseEpoch: job.leaseEpoch + 1,
          ...(outOfAttempts ? { finishedAt: at, error: `${reason}; no attempt left` } : { pendingReason: reason }),
        },
        at,
      );
      if (row) {
        await tx
          .update(nodes)
          .set({
            allocatedCpuMillis: sql`${nodes.allocatedCpuMillis} - ${job.cpuMillis}`,
            allocatedMemoryMb: sql`${nodes.allocatedMemoryMb} - ${job.memoryMb}`,
          })
          .where(eq(nodes.id, nodeId));
        moved.push(jobId);
      }
    }
    await tx.update(gpus).set({ jobId: null }).where(eq(gpus.jobId, jobId));
  }
  return moved;
}
