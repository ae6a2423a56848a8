import { createRoute } from '@hono/zod-openapi';
import { Heartbeat, HeartbeatAnswer, RegisterNode, RegisteredNode } from '../../shared/nodes.ts';
import type { AppDeps } from '../deps.ts';
import { ingestHeartbeat, registerNode } from '../nodes/registry.ts';
import { agentAuth, createRouter, errorResponses } from './router.ts';
import { requireAgent } from './auth.ts';

const json = <T>(schema: T) => ({ content: { 'application/json': { schema } } });

/** What agents call: registration with an enrollment token, then heartbeats with their own token. */
export function agentRoutes(deps: AppDeps) {
  const app = createRouter();
  app.use('/v1/agent/heartbeat', requireAgent(deps));

  app.openapi(
    createRoute({
      method: 'post',
      path: '/v1/agent/register',
      summary: 'Register a machine as a node, with an enrollment token',
      request: { body: { required: true, ...json(RegisterNode) } },
      responses: { 201: { description: 'Registered', ...json(RegisteredNode) }, ...errorResponses },
    }),
    async (c) => c.json(await registerNode(deps, c.req.valid('json'), deps.clock.now()), 201),
  );

  app.openapi(
    createRoute({
      method: 'post',
      path: '/v1/agent/heartbeat',
      summary: "A node's heartbeat: liveness, metrics, held jobs, changed hardware (agent token)",
      security: agentAuth,
      request: { body: { required: true, ...json(Heartbeat) } },
      responses: { 200: { description: 'Taken; may carry lease renewals and cancellations', ...json(HeartbeatAnswer) }, ...errorResponses },
    }),
    async (c) => c.json(await ingestHeartbeat(deps, c.get('nodeId'), c.req.valid('json'), deps.clock.now()), 200),
  );

  return app;
}
