import { and, eq, sql } from 'drizzle-orm';
import type { DrainState } from '../../shared/leases.ts';
import type { Principal } from '../auth/api-keys.ts';
import { hasScope } from '../auth/api-keys.ts';
import type { DbOrTx } from '../db/open.ts';
import { jobs, nodes } from '../db/schema/index.ts';
import { liveStatuses } from '../jobs/transitions.ts';
import { notFound } from '../errors.ts';

/**
 * Draining is a flag on the node that survives offline and online: a draining node gets no new
 * leases, keeps running what it holds, and stays drained after its last job ends until its
 * provider undrains it. Another provider's node is not found.
 */
export async function setDraining(db: DbOrTx, principal: Principal, nodeId: string, draining: boolean): Promise<DrainState> {
  const owned = hasScope(principal, 'admin') ? eq(nodes.id, nodeId) : and(eq(nodes.id, nodeId), eq(nodes.accountId, principal.accountId));
  const [row] = await db.update(nodes).set({ draining }).where(owned).returning({ id: nodes.id, draining: nodes.draining, status: nodes.status });
  if (!row) throw notFound('node');
  const [live] = await db
    .select({ n: sql<number>`count(*)::int` })
    .from(jobs)
    .where(and(eq(jobs.nodeId, nodeId), sql`${jobs.status} in (${sql.join(liveStatuses.map((s) => sql`${s}`), sql`, `)})`));
  return { nodeId: row.id, status: row.status, draining: row.draining, liveJobs: Number(live?.n ?? 0) };
}
