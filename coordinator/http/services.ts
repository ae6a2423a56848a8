import { createRoute, z } from '@hono/zod-openapi';
import { idPattern } from '../../shared/ids.ts';
import { CreatedServiceToken, CreateServiceToken, ServiceReadyReport, ServiceTokenInfo, ServiceTokenList } from '../../shared/services.ts';
import type { AppDeps } from '../deps.ts';
import { markServiceReady } from '../services/readiness.ts';
import { createServiceToken, listServiceTokens, revokeServiceToken, toServiceTokenInfo } from '../services/tokens.ts';
import { agentAuth, bearerAuth, createRouter, errorResponses } from './router.ts';
import { requireAgent, requireKey } from './auth.ts';

const json = <T>(schema: T) => ({ content: { 'application/json': { schema } } });
const JobIdParam = z.object({ id: z.string().regex(idPattern('job'), 'not a job id') });
const TokenParams = JobIdParam.extend({ tokenId: z.string().regex(idPattern('serviceToken'), 'not a service token id') });

// Service jobs' API: the tokens that call one in its owner's stead, and the agent's readiness
// report. The requests to the services themselves go through the front door (services/proxy.ts).
export function serviceRoutes(deps: AppDeps) {
  const app = createRouter();
  const { db } = deps.database;
  const client = requireKey(deps.keys, 'client');
  app.use('/v1/agent/jobs/:id/service-ready', requireAgent(deps));

  app.openapi(
    createRoute({
      method: 'post',
      path: '/v1/jobs/{id}/service-tokens',
      summary: 'Make a token that calls this service job (shown once)',
      security: bearerAuth,
      middleware: client,
      request: { params: JobIdParam, body: { required: true, ...json(CreateServiceToken) } },
      responses: { 201: { description: 'Created: the token, never shown again', ...json(CreatedServiceToken) }, ...errorResponses },
    }),
    async (c) => {
      const { token, row } = await createServiceToken(db, c.get('principal').accountId, c.req.valid('param').id, c.req.valid('json'), deps.clock.now());
      return c.json({ ...toServiceTokenInfo(row), token }, 201);
    },
  );

  app.openapi(
    createRoute({
      method: 'get',
      path: '/v1/jobs/{id}/service-tokens',
      summary: "A service job's tokens, oldest first (revoked and expired ones included)",
      security: bearerAuth,
      middleware: client,
      request: { params: JobIdParam },
      responses: { 200: { description: 'The tokens', ...json(ServiceTokenList) }, ...errorResponses },
    }),
    async (c) => {
      const rows = await listServiceTokens(db, c.get('principal').accountId, c.req.valid('param').id);
      return c.json({ items: rows.map(toServiceTokenInfo) }, 200);
    },
  );

  app.openapi(
    createRoute({
      method: 'delete',
      path: '/v1/jobs/{id}/service-tokens/{tokenId}',
      summary: 'Revoke a service token: it stops at once, open requests included',
      security: bearerAuth,
      middleware: client,
      request: { params: TokenParams },
      responses: { 200: { description: 'Revoked', ...json(ServiceTokenInfo) }, ...errorResponses },
    }),
    async (c) => {
      const { id, tokenId } = c.req.valid('param');
      const row = await revokeServiceToken(db, c.get('principal').accountId, id, tokenId, deps.clock.now());
      await deps.services.tokens.revoked(row.id);
      return c.json(toServiceTokenInfo(row), 200);
    },
  );

  app.openapi(
    createRoute({
      method: 'post',
      path: '/v1/agent/jobs/{id}/service-ready',
      summary: "Agent: the service job's readiness probe passed (with the lease epoch it holds)",
      security: agentAuth,
      request: { params: JobIdParam, body: { required: true, ...json(ServiceReadyReport) } },
      responses: { 204: { description: 'Recorded' }, ...errorResponses },
    }),
    async (c) => {
      const jobId = c.req.valid('param').id;
      await markServiceReady(db, c.get('nodeId'), jobId, c.req.valid('json').epoch, deps.clock.now());
      deps.services.directory.invalidate(jobId);
      return c.body(null, 204);
    },
  );

  return app;
}
