import { createRoute } from '@hono/zod-openapi';
import { Pool, PoolHistory, PoolHistoryQuery } from '../../shared/pool.ts';
import type { AppDeps } from '../deps.ts';
import { readHistory } from '../pool/history.ts';
import { createRouter, errorResponses } from './router.ts';

const json = <T>(schema: T) => ({ content: { 'application/json': { schema } } });

/** Public: aggregates of the whole pool, never a tenant's data. */
export function poolRoutes(deps: AppDeps) {
  const app = createRouter();

  app.openapi(
    createRoute({
      method: 'get',
      path: '/v1/pool',
      summary: 'The pool now: GPUs by model (online, free, busy, offline, prices), CPU and memory, queue, last hour, regions',
      responses: { 200: { description: 'Pool figures (at most a second or two old)', ...json(Pool) }, 400: errorResponses[400] },
    }),
    async (c) => {
      // Serialized once per computation, not per reader.
      const body = await deps.pool.json();
      return c.body(body, 200, { 'content-type': 'application/json', 'cache-control': 'public, max-age=1' }) as never;
    },
  );

  app.openapi(
    createRoute({
      method: 'get',
      path: '/v1/pool/history',
      summary: "The pool's counts over time, one point per step (since: ISO time or look-back like 6h; step: seconds or 5m)",
      request: { query: PoolHistoryQuery },
      responses: { 200: { description: 'Points, oldest first', ...json(PoolHistory) }, 400: errorResponses[400] },
    }),
    async (c) => {
      const history = await readHistory(deps.database, deps.clock.now(), deps.config.poolHistoryStepSeconds, c.req.valid('query'));
      return c.json(history, 200);
    },
  );

  return app;
}
