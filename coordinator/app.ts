import { OpenAPIHono } from '@hono/zod-openapi';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Duplex } from 'node:stream';
import { getRequestListener } from '@hono/node-server';
import type { Context } from 'hono';
import { bodyLimit } from 'hono/body-limit';
import { matchedRoutes } from 'hono/route';
import { randomUUID } from 'node:crypto';
import type { AppDeps } from './deps.ts';
import { accountRoutes } from './http/accounts.ts';
import type { AppEnv } from './http/env.ts';
import { healthRoutes } from './http/health.ts';
import { jobRoutes } from './http/jobs.ts';
import { agentRoutes } from './http/agent.ts';
import { enrollmentRoutes } from './http/enrollment.ts';
import { nodeRoutes } from './http/nodes.ts';
import { blobRoutes } from './http/blobs.ts';
import { logRoutes } from './http/logs.ts';
import { serviceRoutes } from './http/services.ts';
import { serviceFrontDoor } from './http/service-front-door.ts';
import { outputRoutes } from './http/outputs.ts';
import { gantryVersion } from '../shared/version.ts';
import { ApiError } from './errors.ts';
import { problemResponse, renderError } from './http/problem.ts';
import { metricsRoutes } from './http/metrics.ts';
import { poolRoutes } from './http/pool.ts';
import { offerRoutes } from './http/offers.ts';
import { leaseRoutes } from './http/leases.ts';
import { drainRoutes } from './http/drain.ts';
import { usageRoutes } from './http/usage.ts';
import { ledgerRoutes } from './http/ledger.ts';
import { dashboardRoutes } from './http/dashboard.ts';
import { httpMetrics } from './metrics/http.ts';

/** The route pattern that answered (not the path, which holds ids), even when a middleware refused. */
function routeOf(c: Context): string {
  const routes = matchedRoutes(c);
  for (let i = routes.length - 1; i >= 0; i--) if (routes[i]!.method !== 'ALL') return routes[i]!.path;
  return '(no route)';
}

/** Paths whose bodies are not JSON documents and carry their own size cap. */
const rawBodyPaths = [/^\/v1\/blobs$/, /^\/v1\/agent\/jobs\/[^/]+\/outputs$/];

export function createApp(deps: AppDeps): OpenAPIHono<AppEnv> {
  const app = new OpenAPIHono<AppEnv>();

  app.use('*', async (c, next) => {
    const started = performance.now();
    c.set('requestId', c.req.header('x-request-id')?.slice(0, 64) || randomUUID());
    c.set('log', deps.log);
    // Set before the answer exists: set after, it would rebuild the response object.
    c.header('x-request-id', c.get('requestId'));
    await next();
    if (deps.config.logRequests) {
      deps.log.info('request', {
        method: c.req.method,
        route: routeOf(c),
        status: c.res.status,
        ms: Math.round((performance.now() - started) * 10) / 10,
        requestId: c.get('requestId'),
      });
    }
  });

  app.use('*', httpMetrics(deps.metrics));

  const limit = bodyLimit({
    maxSize: deps.config.bodyLimitBytes,
    onError: () => {
      throw new ApiError('payload_too_large', `the request body is over ${deps.config.bodyLimitBytes} bytes`);
    },
  });
  app.use('/v1/*', async (c, next) => {
    if (rawBodyPaths.some((p) => p.test(c.req.path))) return next();
    // A body that is not declared as JSON is refused, never read as empty.
    if (['POST', 'PUT', 'PATCH'].includes(c.req.method) && c.req.header('content-length') !== '0') {
      const type = c.req.header('content-type') ?? '';
      const hasBody = c.req.header('content-length') !== undefined || c.req.header('transfer-encoding') !== undefined;
      if (hasBody && !/^application\/(.+\+)?json\s*(;|$)/i.test(type)) {
        throw new ApiError('unsupported_media_type', 'send the body as application/json');
      }
    }
    // With a Content-Length (Node's parser never reads past it) the check needs no look at the
    // body; only a chunked body goes through bodyLimit, which counts it as it streams in.
    const length = c.req.header('content-length');
    if (length !== undefined && c.req.header('transfer-encoding') === undefined) {
      if (Number(length) > deps.config.bodyLimitBytes) {
        throw new ApiError('payload_too_large', `the request body is over ${deps.config.bodyLimitBytes} bytes`);
      }
      return next();
    }
    if (c.req.method === 'GET' || c.req.method === 'HEAD') return next();
    return limit(c, next);
  });

  app.route('/', healthRoutes(deps));
  app.route('/', accountRoutes(deps));
  // Before the jobs routes: POST /v1/jobs/dry-run must not be read as a job id.
  app.route('/', offerRoutes(deps));
  app.route('/', jobRoutes(deps));
  app.route('/', serviceRoutes(deps));
  app.route('/', enrollmentRoutes(deps));
  app.route('/', nodeRoutes(deps));
  app.route('/', agentRoutes(deps));
  app.route('/', poolRoutes(deps));
  app.route('/', metricsRoutes(deps));
  app.route('/', usageRoutes(deps));
  app.route('/', ledgerRoutes(deps));
  app.route('/', dashboardRoutes(deps));
  app.route('/', blobRoutes(deps));
  app.route('/', logRoutes(deps));
  app.route('/', outputRoutes(deps));
  app.route('/', leaseRoutes(deps));
  app.route('/', drainRoutes(deps));

  app.openAPIRegistry.registerComponent('securitySchemes', 'bearerAuth', { type: 'http', scheme: 'bearer' });
  // Agent routes: a short-lived JWT the agent signs with its own Ed25519 key (sub = node id).
  app.openAPIRegistry.registerComponent('securitySchemes', 'agentToken', {
    type: 'http',
    scheme: 'bearer',
    bearerFormat: 'JWT',
    description: "The agent's own EdDSA-signed token: sub is the node id, aud the coordinator",
  });
  app.doc31('/openapi.json', {
    openapi: '3.1.0',
    info: { title: 'Gantry coordinator', version: gantryVersion },
    servers: [{ url: deps.config.publicUrl }],
  });

  app.notFound((c) => problemResponse(c, 'no_route', `no route for ${c.req.method} ${c.req.path}`));
  app.onError(renderError);
  return app;
}

/**
 * The listener's handlers: a request whose Host names a service job goes to that job's front
 * door; every other request is the API's. Upgrades likewise: a service's WebSocket, or an agent's tunnel.
 */
export function createHandlers(deps: AppDeps) {
  const api = getRequestListener(createApp(deps).fetch);
  const frontDoor = serviceFrontDoor(deps);
  return {
    request(req: IncomingMessage, res: ServerResponse) {
      const jobId = frontDoor.jobOf(req);
      if (jobId) void frontDoor.handle(req, res, jobId);
      else void api(req, res);
    },
    upgrade(req: IncomingMessage, socket: Duplex, head: Buffer) {
      const jobId = frontDoor.jobOf(req);
      if (jobId) void frontDoor.handleUpgrade(req, socket, head, jobId);
      else void deps.services.upgrade(req, socket, head);
    },
    close: () => frontDoor.close(),
  };
}
