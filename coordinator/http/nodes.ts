import { createRoute, z } from '@hono/zod-openapi';
import { Node, NodeId, NodeListQuery, NodeMetricsQuery, NodeMetricsSeries, UpdateNode } from '../../shared/nodes.ts';
import { PageQuery, pageOf } from '../../shared/pagination.ts';
import type { AppDeps } from '../deps.ts';
import { getOwnNode, listOwnNodes, nodeMetricsSeries, retireNode, updateNode } from '../nodes/manage.ts';
import { nodeRetiredChannel } from '../nodes/agent-auth.ts';
import { topics } from '../signals.ts';
import { bearerAuth, createRouter, errorResponses } from './router.ts';
import { requireKey } from './auth.ts';

const json = <T>(schema: T) => ({ content: { 'application/json': { schema } } });
const NodeIdParam = z.object({ id: NodeId });

export function nodeRoutes(deps: AppDeps) {
  const app = createRouter();
  const { db } = deps.database;
  app.use('/v1/nodes', requireKey(deps.keys, 'provider'));
  app.use('/v1/nodes/*', requireKey(deps.keys, 'provider'));

  app.openapi(
    createRoute({
      method: 'get',
      path: '/v1/nodes',
      summary: 'List your nodes with their GPUs and latest metrics, oldest first',
      security: bearerAuth,
      request: { query: PageQuery.extend(NodeListQuery.shape) },
      responses: { 200: { description: 'A page of nodes', ...json(pageOf(Node)) }, ...errorResponses },
    }),
    async (c) => {
      const page = await listOwnNodes(db, c.get('principal').accountId, c.req.valid('query'));
      return c.json(page, 200);
    },
  );

  app.openapi(
    createRoute({
      method: 'get',
      path: '/v1/nodes/{id}',
      summary: 'Read one of your nodes',
      security: bearerAuth,
      request: { params: NodeIdParam },
      responses: { 200: { description: 'The node', ...json(Node) }, ...errorResponses },
    }),
    async (c) => c.json(await getOwnNode(db, c.get('principal').accountId, c.req.valid('param').id), 200),
  );

  app.openapi(
    createRoute({
      method: 'get',
      path: '/v1/nodes/{id}/metrics',
      summary: "A node's per-minute metrics in a time range (default: the last hour; kept 7 days)",
      security: bearerAuth,
      request: { params: NodeIdParam, query: NodeMetricsQuery },
      responses: { 200: { description: 'Samples, oldest first', ...json(NodeMetricsSeries) }, ...errorResponses },
    }),
    async (c) => {
      const series = await nodeMetricsSeries(db, c.get('principal').accountId, c.req.valid('param').id, c.req.valid('query'), deps.clock.now());
      return c.json(series, 200);
    },
  );

  app.openapi(
    createRoute({
      method: 'patch',
      path: '/v1/nodes/{id}',
      summary: "Change a node's name, prices, labels or region",
      security: bearerAuth,
      request: { params: NodeIdParam, body: { required: true, ...json(UpdateNode) } },
      responses: { 200: { description: 'The node', ...json(Node) }, ...errorResponses },
    }),
    async (c) => {
      const node = await updateNode(db, c.get('principal').accountId, c.req.valid('param').id, c.req.valid('json'));
      // A new price, labels or region change where jobs go.
      deps.signals.emit(topics.nodeChanged, node.id);
      return c.json(node, 200);
    },
  );

  app.openapi(
    createRoute({
      method: 'delete',
      path: '/v1/nodes/{id}',
      summary: 'Retire a node that runs no job',
      security: bearerAuth,
      request: { params: NodeIdParam },
      responses: { 200: { description: 'Retired', ...json(Node) }, ...errorResponses },
    }),
    async (c) => {
      const node = await retireNode(db, c.get('principal').accountId, c.req.valid('param').id);
      deps.agents.forgetNode(node.id);
      await deps.database.notify(nodeRetiredChannel, node.id);
      return c.json(node, 200);
    },
  );

  return app;
}
