import { createRoute, z } from '@hono/zod-openapi';
import { idPattern } from '../../shared/ids.ts';
import { CreateEnrollmentToken, EnrollmentToken, EnrollmentTokenInfo } from '../../shared/nodes.ts';
import { PageQuery, pageOf } from '../../shared/pagination.ts';
import type { AppDeps } from '../deps.ts';
import { createEnrollmentToken, listEnrollmentTokens, revokeEnrollmentToken } from '../nodes/enrollment-tokens.ts';
import { bearerAuth, createRouter, errorResponses } from './router.ts';
import { requireKey } from './auth.ts';

const json = <T>(schema: T) => ({ content: { 'application/json': { schema } } });
const TokenIdParam = z.object({ id: z.string().regex(idPattern('enrollmentToken'), 'not an enrollment token id') });

export function enrollmentRoutes(deps: AppDeps) {
  const app = createRouter();
  app.use('/v1/enrollment-tokens', requireKey(deps.keys, 'provider'));
  app.use('/v1/enrollment-tokens/*', requireKey(deps.keys, 'provider'));

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

  app.openapi(
    createRoute({
      method: 'get',
      path: '/v1/enrollment-tokens',
      summary: "List your enrollment tokens, oldest first, spent, expired and revoked ones too (provider)",
      security: bearerAuth,
      request: { query: PageQuery },
      responses: { 200: { description: 'A page of tokens (never the tokens themselves)', ...json(pageOf(EnrollmentTokenInfo)) }, ...errorResponses },
    }),
    async (c) => c.json(await listEnrollmentTokens(deps.database.db, c.get('principal').accountId, c.req.valid('query')), 200),
  );

  app.openapi(
    createRoute({
      method: 'delete',
      path: '/v1/enrollment-tokens/{id}',
      summary: 'Revoke an enrollment token: no machine joins with it any more; nodes that joined stay (provider)',
      security: bearerAuth,
      request: { params: TokenIdParam },
      responses: { 200: { description: 'Revoked', ...json(EnrollmentTokenInfo) }, ...errorResponses },
    }),
    async (c) => {
      const token = await revokeEnrollmentToken(deps.database.db, c.get('principal').accountId, c.req.valid('param').id, deps.clock.now());
      return c.json(token, 200);
    },
  );

  return app;
}
