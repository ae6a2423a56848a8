import { createRoute } from '@hono/zod-openapi';
import { DrainState } from '../../shared/leases.ts';
import { idPattern } from '../../shared/ids.ts';
import type { AppDeps } from '../deps.ts';
import { setDraining } from '../scheduler/drain.ts';
import { topics } from '../signals.ts';
import { bearerAuth, createRouter, errorResponses } from './router.ts';
import { z } from '@hono/zod-openapi';
import { requireKey } from './auth.ts';

const json = <T>(schema: T) => ({ content: { 'application/json': { schema } } });
const NodeIdParam = z.object({ id: z.string().regex(idPattern('node'), 'not a node id') });

/** POST /v1/nodes/{id}/drain and /undrain: the provider stops (and resumes) new leases on its node. */
export function drainRoutes(deps: AppDeps) {
  const app = createRouter();
  const { db } = deps.database;
  app.use('/v1/nodes/:id/drain', requireKey(deps.keys, 'provider'));
  app.use('/v1/nodes/:id/undrain', requireKey(deps.keys, 'provider'));

  for (const [verb, draining] of [
    ['drain', true],
    ['undrain', false],
  ] as const) {
    app.openapi(
      createRoute({
        method: 'post',
        path: `/v1/nodes/{id}/${verb}`,
        summary: draining
          ? 'Drain a node: no new leases; what it runs finishes; it stays drained until undrained'
          : 'Undrain a node: it takes new leases again',
        security: bearerAuth,
        request: { params: NodeIdParam },
        responses: { 200: { description: 'The node’s drain state', ...json(DrainState) }, ...errorResponses },
      }),
      async (c) => {
        const state = await setDraining(db, c.get('principal'), c.req.valid('param').id, draining);
        deps.signals.emit(topics.nodeChanged, state.nodeId);
        return c.json(state, 200);
      },
    );
  }
  return app;
}
