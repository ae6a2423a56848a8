import type { Context, MiddlewareHandler } from 'hono';
import { matchedRoutes } from 'hono/route';
import type { Metrics } from './registry.ts';

/** The route pattern that answered (never the raw path, which holds ids): labels stay few. */
function routePattern(c: Context): string {
  const routes = matchedRoutes(c);
  for (let i = routes.length - 1; i >= 0; i--) if (routes[i]!.method !== 'ALL') return routes[i]!.path;
  return c.res.status === 404 ? '(no route)' : '(middleware)';
}

/** Times every request into gantry_http_request_duration_seconds. */
export function httpMetrics(metrics: Metrics): MiddlewareHandler {
  return async (c, next) => {
    const started = performance.now();
    await next();
    metrics.httpDuration.observe(
      { method: c.req.method, route: routePattern(c), status: String(c.res.status) },
      (performance.now() - started) / 1000,
    );
  };
}
