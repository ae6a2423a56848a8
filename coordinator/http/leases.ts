import { createRoute, z } from '@hono/zod-openapi';
import { idPattern } from '../../shared/ids.ts';
import { FinishReport, ReportAnswer, RunningReport, Work, WorkQuery } from '../../shared/leases.ts';
import type { AppDeps } from '../deps.ts';
import { finishJob, markRunning } from '../jobs/transitions.ts';
import type { JobRow } from '../jobs/lifecycle.ts';
import { topics } from '../signals.ts';
import { ApiError } from '../errors.ts';
import { agentAuth, createRouter, errorResponses } from './router.ts';
import { requireAgent } from './auth.ts';

const json = <T>(schema: T) => ({ content: { 'application/json': { schema } } });
const JobIdParam = z.object({ id: z.string().regex(idPattern('job'), 'not a job id') });
const Jwk = z.record(z.string(), z.unknown());

/** How often a waiting long-poll checks that its node still serves (was not retired). */
const recheckMs = 3000;

const answer = (job: JobRow) => ({ jobId: job.id, status: job.status, epoch: job.leaseEpoch });

/** Parses `have` (jobId.epoch,...) into the set the long-poll leaves out. */
function haveSet(have: string | undefined): Set<string> {
  return new Set((have ?? '').split(',').map((s) => s.trim()).filter(Boolean));
}

/** Leases: the public keys that verify them, the node's work long-poll, and the agent's reports. */
export function leaseRoutes(deps: AppDeps) {
  const app = createRouter();
  const { db } = deps.database;
  app.use('/v1/agent/work', requireAgent(deps));
  app.use('/v1/agent/jobs/:id/running', requireAgent(deps));
  app.use('/v1/agent/jobs/:id/finish', requireAgent(deps));

  app.openapi(
    createRoute({
      method: 'get',
      path: '/.well-known/jwks.json',
      summary: 'The public keys that verify lease tokens (every unretired one)',
      responses: { 200: { description: 'JWKS', ...json(z.object({ keys: z.array(Jwk) })) } },
    }),
    (c) => {
      c.header('cache-control', 'public, max-age=60');
      return c.json(deps.leases.keys.jwks() as { keys: Record<string, unknown>[] }, 200);
    },
  );

  app.openapi(
    createRoute({
      method: 'get',
      path: '/v1/agent/work',
      summary: "Long-poll for this node's new leases: answers at once when one is issued",
      security: agentAuth,
      request: { query: WorkQuery },
      responses: { 200: { description: 'Leases not yet held (may be none)', ...json(Work) }, ...errorResponses },
    }),
    async (c) => {
      const { wait, have } = c.req.valid('query');
      const nodeId = c.get('nodeId');
      const held = haveSet(have);
      // Answered within a third of the lease TTL whatever the wait asked: a lease issued to a poll
      // is delivered with most of its TTL still ahead, and the agent hears from us well within it.
      const deadline = Date.now() + Math.min(wait, deps.config.leaseTtlSeconds / 3) * 1000;
      const abort = c.req.raw.signal;
      for (;;) {
        const waiter = deps.leases.notifier.waiter(nodeId);
        try {
          const leases = await deps.leases.undelivered(nodeId, held);
          if (leases.length || Date.now() >= deadline || abort.aborted) return c.json({ leases }, 200);
          // A node retired while it waits is refused within a few seconds, not at the end of the wait
          // (the check reads the node's row only when its key is not cached: once after a retirement).
          while (!(await waiter.until(Math.min(deadline, Date.now() + recheckMs), abort))) {
            if (Date.now() >= deadline || abort.aborted) break;
            // A database that is away for a moment is no reason to end the wait; a retirement is.
            await deps.agents.requireServing(nodeId).catch((err: unknown) => {
              if (err instanceof ApiError) throw err;
            });
          }
        } finally {
          waiter.cancel();
        }
      }
    },
  );

  app.openapi(
    createRoute({
      method: 'post',
      path: '/v1/agent/jobs/{id}/running',
      summary: 'The job started on this node (with the lease epoch it holds)',
      security: agentAuth,
      request: { params: JobIdParam, body: { required: true, ...json(RunningReport) } },
      responses: { 200: { description: 'The job as it is now', ...json(ReportAnswer) }, ...errorResponses },
    }),
    async (c) => {
      const { epoch } = c.req.valid('json');
      const at = deps.clock.now();
      const job = await db.transaction((tx) => markRunning(tx, c.get('nodeId'), c.req.valid('param').id, epoch, at));
      return c.json(answer(job), 200);
    },
  );

  app.openapi(
    createRoute({
      method: 'post',
      path: '/v1/agent/jobs/{id}/finish',
      summary: 'The job ended on this node: exit code, reason, usage (with the lease epoch it holds)',
      security: agentAuth,
      request: { params: JobIdParam, body: { required: true, ...json(FinishReport) } },
      responses: { 200: { description: 'The job as it is now', ...json(ReportAnswer) }, ...errorResponses },
    }),
    async (c) => {
      const report = c.req.valid('json');
      const at = deps.clock.now();
      const job = await db.transaction((tx) => finishJob(tx, c.get('nodeId'), c.req.valid('param').id, report, at));
      // Its capacity is free, and a retried job is queued again.
      deps.signals.emit(topics.nodeChanged, c.get('nodeId'));
      return c.json(answer(job), 200);
    },
  );

  return app;
}
