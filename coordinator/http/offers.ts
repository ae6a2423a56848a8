import { createRoute } from '@hono/zod-openapi';
import { JobSpec } from '../../shared/jobs.ts';
import { DryRun, Offers, OffersQuery } from '../../shared/pool.ts';
import type { AppDeps } from '../deps.ts';
import { dryRun, listOffers } from '../pool/offers.ts';
import { bearerAuth, createRouter, errorResponses } from './router.ts';
import { requireKey } from './auth.ts';

const json = <T>(schema: T) => ({ content: { 'application/json': { schema } } });

/** What a client can lease now, and what a job spec would get if submitted now. */
export function offerRoutes(deps: AppDeps) {
  const app = createRouter();
  app.use('/v1/offers', requireKey(deps.keys, 'client'));
  app.use('/v1/jobs/dry-run', requireKey(deps.keys, 'client'));

  app.openapi(
    createRoute({
      method: 'get',
      path: '/v1/offers',
      summary: 'Free capacity per node that fits the asked shape (gpus defaults to 1), cheapest first; providers are not named',
      security: bearerAuth,
      request: { query: OffersQuery },
      responses: { 200: { description: 'Offers', ...json(Offers) }, ...errorResponses },
    }),
    async (c) => c.json(await listOffers(deps.database, c.req.valid('query')), 200),
  );

  app.openapi(
    createRoute({
      method: 'post',
      path: '/v1/jobs/dry-run',
      summary: 'What submitting this job now would do: the offers it would take first, the cost per hour, and why other nodes cannot take it',
      security: bearerAuth,
      request: { body: { required: true, ...json(JobSpec) } },
      responses: { 200: { description: 'The dry run; nothing was queued', ...json(DryRun) }, ...errorResponses },
    }),
    async (c) =>
      c.json(await dryRun(deps.database, c.req.valid('json'), { accountId: c.get('principal').accountId, leaseTtlSeconds: deps.config.leaseTtlSeconds }), 200),
  );

  return app;
}
