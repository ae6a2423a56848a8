import { createRoute, z } from '@hono/zod-openapi';
import { readdirSync } from 'node:fs';
import type { AppDeps } from '../deps.ts';
import { migrationsApplied, migrationsFolder } from '../db/migrate.ts';
import { createRouter } from './router.ts';

const Health = z.object({ status: z.enum(['ok', 'unavailable']), detail: z.string().optional() });
const json = <T>(schema: T) => ({ content: { 'application/json': { schema } } });

export function healthRoutes(deps: AppDeps) {
  const app = createRouter();
  const expected = readdirSync(migrationsFolder).filter((f) => f.endsWith('.sql')).length;

  app.openapi(
    createRoute({
      method: 'get',
      path: '/healthz',
      summary: 'The process is up',
      responses: { 200: { description: 'Up', ...json(Health) } },
    }),
    (c) => c.json({ status: 'ok' as const }, 200),
  );

  app.openapi(
    createRoute({
      method: 'get',
      path: '/readyz',
      summary: 'The database answers and the migrations are applied',
      responses: { 200: { description: 'Ready', ...json(Health) }, 503: { description: 'Not ready', ...json(Health) } },
    }),
    async (c) => {
      // While the database is away the answer is known without asking it (and without waiting on it).
      const ready = deps.availability.available && (await migrationsApplied(deps.database, expected));
      return ready
        ? c.json({ status: 'ok' as const }, 200)
        : c.json({ status: 'unavailable' as const, detail: 'database unreachable or migrations not applied' }, 503);
    },
  );
  return app;
}
