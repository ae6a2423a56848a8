import { createRoute, z } from '@hono/zod-openapi';
import type { Context } from 'hono';
import { BlobCreated, BlobDigest } from '../../shared/blobs.ts';
import { idPattern } from '../../shared/ids.ts';
import { openJobInput, openOwnBlob, uploadBlob } from '../blobs/service.ts';
import { BlobTooLargeError, fromWebStream, toWebStream } from '../blobs/store.ts';
import type { AppDeps } from '../deps.ts';
import type { AppEnv } from './env.ts';
import { agentAuth, bearerAuth, createRouter, errorResponses } from './router.ts';
import { requireAgent, requireKey } from './auth.ts';

const json = <T>(schema: T) => ({ content: { 'application/json': { schema } } });
const bytes = { content: { 'application/octet-stream': { schema: z.string().openapi({ format: 'binary' }) } } };
const DigestParam = z.object({ digest: BlobDigest });
const EpochQuery = z.object({ epoch: z.coerce.number().int().min(1).max(2_147_483_647) });

/** Refuses a body whose declared length is over the cap before reading any of it. */
export function checkDeclaredLength(c: Context<AppEnv>, maxBytes: number): void {
  const declared = Number(c.req.header('content-length'));
  if (Number.isFinite(declared) && declared > maxBytes) throw new BlobTooLargeError(maxBytes);
}

/** A stored blob as a streamed download. */
export function blobResponse(body: AsyncIterable<Uint8Array>, size: number, type = 'application/octet-stream', extra: Record<string, string> = {}) {
  return new Response(toWebStream(body), { status: 200, headers: { 'content-type': type, 'content-length': String(size), ...extra } });
}

export function blobRoutes(deps: AppDeps) {
  const app = createRouter();
  const store = { db: deps.database.db, blobs: deps.blobs };
  app.use('/v1/blobs', requireKey(deps.keys, 'client'));
  app.use('/v1/blobs/*', requireKey(deps.keys, 'client'));
  app.use('/v1/agent/jobs/:id/inputs/*', requireAgent(deps));

  app.openapi(
    createRoute({
      method: 'post',
      path: '/v1/blobs',
      summary: "Upload a job input (a file or a tar archive) as the raw body; answered with its digest",
      description: 'Any content type; the size is capped (GANTRY_BLOB_MAX_BYTES). Name the digest in a job spec\'s inputs.',
      security: bearerAuth,
      request: { body: { required: true, ...bytes } },
      responses: { 201: { description: 'Stored', ...json(BlobCreated) }, ...errorResponses },
    }),
    async (c) => {
      checkDeclaredLength(c, deps.config.blobMaxBytes);
      const stored = await uploadBlob(store, c.get('principal').accountId, fromWebStream(c.req.raw.body), deps.config.blobMaxBytes);
      return c.json(stored, 201);
    },
  );

  app.openapi(
    createRoute({
      method: 'get',
      path: '/v1/blobs/{digest}',
      summary: 'Download a blob you uploaded',
      security: bearerAuth,
      request: { params: DigestParam },
      responses: { 200: { description: 'The bytes', ...bytes }, ...errorResponses },
    }),
    async (c) => {
      const { size, body } = await openOwnBlob(store, c.get('principal').accountId, c.req.valid('param').digest);
      return blobResponse(body, size) as never;
    },
  );

  app.openapi(
    createRoute({
      method: 'get',
      path: '/v1/agent/jobs/{id}/inputs/{digest}',
      summary: 'Agent: an input of a job this node holds at this epoch',
      security: agentAuth,
      request: {
        params: z.object({ id: z.string().regex(idPattern('job'), 'not a job id'), digest: BlobDigest }),
        query: EpochQuery,
      },
      responses: { 200: { description: 'The bytes', ...bytes }, ...errorResponses },
    }),
    async (c) => {
      const { id, digest } = c.req.valid('param');
      const { size, body } = await openJobInput(store, c.get('nodeId'), id, c.req.valid('query').epoch, digest);
      return blobResponse(body, size) as never;
    },
  );

  return app;
}

export { EpochQuery };
