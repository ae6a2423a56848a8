import { eq } from 'drizzle-orm';
import type { ServiceSpec } from '../../shared/jobs.ts';
import type { JobStatus } from '../../shared/jobs.ts';
import type { Database } from '../db/open.ts';
import { jobServices, jobs } from '../db/schema/index.ts';
import { serviceOf } from '../jobs/arrays.ts';

/** What the front door needs of a service job to route one request. */
export interface ServiceEntry {
  jobId: string;
  accountId: string;
  status: JobStatus;
  nodeId: string | null;
  leaseEpoch: number;
  service: ServiceSpec | null;
  /** The epoch the agent's readiness probe last passed under (null: never). */
  readyEpoch: number | null;
}

/** How long a job's routing facts are reused: a service under load costs one read per job per second, not one per request. */
const entryMs = 1000;

/** Service jobs' routing facts, read once per job per second (single-flight), dropped at once when this replica changes them. */
export class ServiceDirectory {
  private entries = new Map<string, { at: number; value: Promise<ServiceEntry | null> }>();

  constructor(private database: Database) {}

  lookup(jobId: string): Promise<ServiceEntry | null> {
    const now = performance.now();
    const hit = this.entries.get(jobId);
    if (hit && now - hit.at < entryMs) return hit.value;
    const value = this.read(jobId);
    this.entries.set(jobId, { at: now, value });
    value.catch(() => this.entries.delete(jobId));
    if (this.entries.size > 10_000) this.entries.delete(this.entries.keys().next().value!);
    return value;
  }

  invalidate(jobId: string): void {
    this.entries.delete(jobId);
  }

  private async read(jobId: string): Promise<ServiceEntry | null> {
    const [row] = await this.database.db
      .select({
        jobId: jobs.id,
        accountId: jobs.accountId,
        status: jobs.status,
        nodeId: jobs.nodeId,
        leaseEpoch: jobs.leaseEpoch,
        spec: jobs.spec,
        readyEpoch: jobServices.epoch,
      })
      .from(jobs)
      .leftJoin(jobServices, eq(jobServices.jobId, jobs.id))
      .where(eq(jobs.id, jobId))
      .limit(1);
    if (!row) return null;
    return { ...row, service: serviceOf(row.spec) ?? null, readyEpoch: row.readyEpoch ?? null };
  }
}
