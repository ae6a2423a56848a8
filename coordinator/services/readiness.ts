import { eq } from 'drizzle-orm';
import type { DbOrTx } from '../db/open.ts';
import { jobServices, jobs } from '../db/schema/index.ts';
import { ApiError } from '../errors.ts';
import { serviceOf } from '../jobs/arrays.ts';

/**
 * The agent's word that a service job's readiness probe passed under `epoch`: kept per job with
 * its epoch, so a job placed again starts over as `starting`. 404 for a job this node does not
 * hold, 409 for an epoch or a state that is no longer the job's.
 */
export async function markServiceReady(db: DbOrTx, nodeId: string, jobId: string, epoch: number, at: Date): Promise<void> {
  const [job] = await db
    .select({ nodeId: jobs.nodeId, leaseEpoch: jobs.leaseEpoch, status: jobs.status, spec: jobs.spec })
    .from(jobs)
    .where(eq(jobs.id, jobId));
  if (!job || job.nodeId !== nodeId) throw new ApiError('not_found', 'job not found');
  if (job.leaseEpoch !== epoch) throw new ApiError('stale_lease', `lease epoch ${epoch} is not the job's current one (${job.leaseEpoch})`);
  if (job.status !== 'leased' && job.status !== 'running') throw new ApiError('stale_lease', `the job already ended ${job.status}`);
  if (!serviceOf(job.spec)) throw new ApiError('conflict', 'this job is not a service');
  await db
    .insert(jobServices)
    .values({ jobId, epoch, readyAt: at })
    .onConflictDoUpdate({ target: jobServices.jobId, set: { epoch, readyAt: at } });
}
