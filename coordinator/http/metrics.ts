import type { AppDeps } from '../deps.ts';
import { createRouter } from './router.ts';

/** GET /metrics in the Prometheus text format, for the scrapers operators already run. */
export function metricsRoutes(deps: AppDeps) {
  const app = createRouter();
  app.get('/metrics', async (c) => {
    const { body, contentType } = await deps.metrics.render();
    return c.body(body, 200, { 'content-type': contentType, 'cache-control': 'no-store' });
  });
  return app;
}
