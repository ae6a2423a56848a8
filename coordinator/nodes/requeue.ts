import { and, eq, inArray, isNotNull } from 'drizzle-orm';
import type { Tx } from '../db/open.ts';
import { gpus } from '../db/schema/index.ts';
import { endLeaseOnNode } from '../jobs/transitions.ts';

/**
 * Takes the jobs holding any of these GPUs of a node away from it, in the caller's transaction
 * (which holds the node row): each goes back to the queue, or fails when its attempts are used,
 * with lease epoch + 1 so a late report from the node is fenced off, and the node's CPU, memory
 * and GPUs freed (jobs/transitions.ts). Returns the jobs it moved.
 */
export async function requeueJobsOnGpus(tx: Tx, nodeId: string, gpuIds: string[], reason: string, at: Date): Promise<string[]> {
  if (!gpuIds.length) return [];
  const held = await tx
    .selectDistinct({ jobId: gpus.jobId })
    .from(gpus)
    .where(and(eq(gpus.nodeId, nodeId), inArray(gpus.id, gpuIds), isNotNull(gpus.jobId)));
  const moved: string[] = [];
  // A fixed order, so two transactions moving the same jobs cannot deadlock.
  for (const jobId of held.map((h) => h.jobId!).sort()) {
    if (await endLeaseOnNode(tx, jobId, reason, at)) moved.push(jobId);
    // A job that is no longer live here holds nothing here either.
    else await tx.update(gpus).set({ jobId: null }).where(and(eq(gpus.nodeId, nodeId), eq(gpus.jobId, jobId)));
  }
  return moved;
}
