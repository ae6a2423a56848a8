import { createRoute } from '@hono/zod-openapi';
import { CreateEnrollmentToken, EnrollmentToken } from '../../shared/nodes.ts';
import { requireKey } from '../auth/api-keys.ts';
import type { AppDeps } from '../deps.ts';
import { createEnrollmentToken } from '../nodes/enrollment-tokens.ts';
import { bearerAuth, createRouter, errorResponses } from './router.ts';

const json = <T>(schema: T) => ({ content: { 'application/json': { schema } } });

export function enrollmentRoutes(deps: AppDeps) {
  const app = createRouter();
  app.use('/v1/enrollment-tokens', requireKey(deps.keys, 'provider'));

  app.openapi(
    createRoute({
      method: 'post',
      path: '/v1/enrollment-tokens',
      summary: 'Create an enrollment token for `gantry-agent join` (provider)',
      security: bearerAuth,
      request: { body: { required: true, ...json(CreateEnrollmentToken) } },
      responses: { 201: { description: 'Created; the token is shown this once', ...json(EnrollmentToken) }, ...errorResponses },
    }),
    async (c) => {
      const body = c.req.valid('json');
      const token = await createEnrollmentToken(deps.database.db, c.get('principal').accountId, body, deps.clock.now());
      return c.json(token, 201);
    },
  );

  return app;
}
