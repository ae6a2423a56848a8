import { eq } from 'drizzle-orm';
import type { DbOrTx } from '../db/open.ts';
import { jobs } from '../db/schema/index.ts';
import type { JobRow } from '../jobs/lifecycle.ts';
import { ApiError, notFound } from '../errors.ts';

/**
 * The fence on everything an agent sends about a job it runs (logs, outputs, result, progress):
 * the job must be held by this node at this epoch and still live. A job of another node is
 * not found, as another tenant's would be; a stale epoch or an ended job is 409 stale_lease.
 */
export async function requireLiveLease(db: DbOrTx, jobId: string, nodeId: string, epoch: number): Promise<JobRow> {
  const [job] = await db.select().from(jobs).where(eq(jobs.id, jobId));
  if (!job || job.nodeId !== nodeId) throw notFound('job');
  if (job.leaseEpoch !== epoch || (job.status !== 'leased' && job.status !== 'running')) {
    throw new ApiError('stale_lease', `this node no longer holds the job at epoch ${epoch} (it is ${job.status} at epoch ${job.leaseEpoch})`);
  }
  return job;
}
