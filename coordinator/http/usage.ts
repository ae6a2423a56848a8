import { createRoute } from '@hono/zod-openapi';
import { Usage, UsageQuery } from '../../shared/pool.ts';
import { hasScope } from '../auth/api-keys.ts';
import type { AppDeps } from '../deps.ts';
import { usageReport } from '../pool/usage.ts';
import { bearerAuth, createRouter, errorResponses } from './router.ts';
import { requireKey } from './auth.ts';

const json = <T>(schema: T) => ({ content: { 'application/json': { schema } } });

export function usageRoutes(deps: AppDeps) {
  const app = createRouter();
  app.use('/v1/usage', requireKey(deps.keys, 'client', 'provider'));

  app.openapi(
    createRoute({
      method: 'get',
      path: '/v1/usage',
      summary: "Your spend (a client key) and your earnings (a provider key), by day (UTC) and by job, from each finished job's metered usage and cost",
      security: bearerAuth,
      request: { query: UsageQuery },
      responses: { 200: { description: 'Spend and earnings; a side the key may not see is null', ...json(Usage) }, ...errorResponses },
    }),
    async (c) => {
      const p = c.get('principal');
      const may = { client: hasScope(p, 'client'), provider: hasScope(p, 'provider') };
      return c.json(await usageReport(deps.database, p.accountId, may, c.req.valid('query'), deps.clock.now()), 200);
    },
  );
  return app;
}
