import { createRoute, z } from '@hono/zod-openapi';
import { JobOutputsInfo, JobResultUpload, maxResultBytes } from '../../shared/blobs.ts';
import { idPattern } from '../../shared/ids.ts';
import { openJobOutputs, storeJobOutputs, storeJobResult } from '../blobs/service.ts';
import { requirePlainTar } from '../blobs/plain-tar.ts';
import { fromWebStream, toWebStream } from '../blobs/store.ts';
import { arrayOutputsTar } from '../blobs/array-outputs.ts';
import { isArray } from '../jobs/arrays.ts';
import { getOwnJob } from '../jobs/lifecycle.ts';
import type { AppDeps } from '../deps.ts';
import { blobResponse, checkDeclaredLength, EpochQuery } from './blobs.ts';
import { agentAuth, bearerAuth, createRouter, errorResponses } from './router.ts';
import { requireAgent, requireKey } from './auth.ts';

const json = <T>(schema: T) => ({ content: { 'application/json': { schema } } });
const JobIdParam = z.object({ id: z.string().regex(idPattern('job'), 'not a job id') });
const tar = { content: { 'application/x-tar': { schema: z.string().openapi({ format: 'binary' }) } } };

export function outputRoutes(deps: AppDeps) {
  const app = createRouter();
  const store = { db: deps.database.db, blobs: deps.blobs };
  app.use('/v1/agent/jobs/:id/outputs', requireAgent(deps));
  app.use('/v1/agent/jobs/:id/result', requireAgent(deps));
  app.use('/v1/jobs/:id/outputs', requireKey(deps.keys, 'client'));

  app.openapi(
    createRoute({
      method: 'post',
      path: '/v1/agent/jobs/{id}/outputs',
      summary: "Agent: the tar of the job's /outputs, as the raw body (a plain tar, size-capped; a compressed one is 415)",
      security: agentAuth,
      request: { params: JobIdParam, query: EpochQuery, body: { required: true, ...tar } },
      responses: { 201: { description: 'Stored', ...json(JobOutputsInfo) }, ...errorResponses },
    }),
    async (c) => {
      checkDeclaredLength(c, deps.config.outputsMaxBytes);
      const stored = await storeJobOutputs(
        store,
        c.get('nodeId'),
        c.req.valid('param').id,
        c.req.valid('query').epoch,
        requirePlainTar(fromWebStream(c.req.raw.body)),
        deps.config.outputsMaxBytes,
      );
      return c.json(stored, 201);
    },
  );

  app.openapi(
    createRoute({
      method: 'post',
      path: '/v1/agent/jobs/{id}/result',
      summary: "Agent: the job's /outputs/result.json, stored on the job",
      security: agentAuth,
      request: { params: JobIdParam, body: { required: true, ...json(JobResultUpload) } },
      responses: { 204: { description: 'Stored' }, ...errorResponses },
    }),
    async (c) => {
      const { epoch, result } = c.req.valid('json');
      await storeJobResult(deps.database.db, c.get('nodeId'), c.req.valid('param').id, epoch, result, maxResultBytes);
      return c.body(null, 204);
    },
  );

  app.openapi(
    createRoute({
      method: 'get',
      path: '/v1/jobs/{id}/outputs',
      summary: "Download what the job wrote to /outputs, as a tar (streamed); a job array's holds each task's under task-<index>/",
      security: bearerAuth,
      request: { params: JobIdParam },
      responses: { 200: { description: 'The tar', ...tar }, ...errorResponses },
    }),
    async (c) => {
      const id = c.req.valid('param').id;
      const job = await getOwnJob(store.db, c.get('principal').accountId, id);
      // An array's: each task's outputs under task-<index>/, re-packed as they stream (no length known before).
      if (isArray(job)) {
        return new Response(toWebStream(arrayOutputsTar(store.db, deps.blobs, id)), {
          status: 200,
          headers: { 'content-type': 'application/x-tar', 'content-disposition': `attachment; filename="${id}-outputs.tar"` },
        }) as never;
      }
      const { digest, size, body } = await openJobOutputs(store, c.get('principal').accountId, id);
      return blobResponse(body, size, 'application/x-tar', {
        'content-disposition': `attachment; filename="${id}-outputs.tar"`,
        etag: `"${digest}"`,
      }) as never;
    },
  );

  return app;
}
