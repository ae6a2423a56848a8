import { createRoute, z } from '@hono/zod-openapi';
import { streamSSE } from 'hono/streaming';
import { idPattern } from '../../shared/ids.ts';
import { isTerminal } from '../../shared/jobs.ts';
import { JobProgress, LogChunk, LogChunkAccepted, LogPage, LogQuery } from '../../shared/logs.ts';
import type { AppDeps } from '../deps.ts';
import { getOwnJob } from '../jobs/lifecycle.ts';
import { appendChunk, logTopic, readChunks, readOwnLog, recordProgress } from '../logs/service.ts';
import { agentAuth, bearerAuth, createRouter, errorResponses, tooManyResponse } from './router.ts';
import { requireAgent, requireKey } from './auth.ts';

const json = <T>(schema: T) => ({ content: { 'application/json': { schema } } });
const JobIdParam = z.object({ id: z.string().regex(idPattern('job'), 'not a job id') });

const cursorOf = (cursor: string | undefined) => (cursor === undefined ? -1 : Number(cursor));

export function logRoutes(deps: AppDeps) {
  const app = createRouter();
  const { db } = deps.database;
  app.use('/v1/agent/jobs/:id/logs', requireAgent(deps));
  app.use('/v1/agent/jobs/:id/progress', requireAgent(deps));
  app.use('/v1/jobs/:id/logs', requireKey(deps.keys, 'client'));

  app.openapi(
    createRoute({
      method: 'post',
      path: '/v1/agent/jobs/{id}/logs',
      summary: "Agent: store one numbered chunk of a job's output (idempotent by seq)",
      security: agentAuth,
      request: { params: JobIdParam, body: { required: true, ...json(LogChunk) } },
      responses: { 200: { description: 'Stored, or already stored', ...json(LogChunkAccepted) }, ...errorResponses },
    }),
    async (c) => {
      const jobId = c.req.valid('param').id;
      const chunk = c.req.valid('json');
      const answer = await appendChunk(db, c.get('nodeId'), jobId, chunk, deps.config.logMaxBytesPerJob);
      if (answer.stored) deps.signals.emit(logTopic(jobId));
      return c.json({ seq: chunk.seq, ...answer }, 200);
    },
  );

  app.openapi(
    createRoute({
      method: 'post',
      path: '/v1/agent/jobs/{id}/progress',
      summary: "Agent: a progress note (an image pull) in the job's events",
      security: agentAuth,
      request: { params: JobIdParam, body: { required: true, ...json(JobProgress) } },
      responses: { 204: { description: 'Recorded' }, ...errorResponses },
    }),
    async (c) => {
      const { epoch, message } = c.req.valid('json');
      await recordProgress(db, c.get('nodeId'), c.req.valid('param').id, epoch, message, deps.clock.now());
      return c.body(null, 204);
    },
  );

  app.openapi(
    createRoute({
      method: 'get',
      path: '/v1/jobs/{id}/logs',
      summary: "A job's output: a page of chunks, or with follow=1 server-sent events until the job ends",
      description:
        'Each chunk holds lines of one stream in order; the order between stdout and stderr is not kept. ' +
        'follow=1 answers text/event-stream: `log` events (id = seq, data = a chunk), then one `end` event whose ' +
        '`reason` says why: `ended` (the job ended; with its status), `revoked` or `expired` (the key), or ' +
        '`max-life`, `lagging`, `shutdown` (reconnect with Last-Event-ID: nothing is lost). ' +
        'A key holds a limited number of streams open at once (429 with Retry-After past it). ' +
        'Authenticate with the Authorization header (read it with fetch streaming; EventSource cannot send one).',
      security: bearerAuth,
      request: { params: JobIdParam, query: LogQuery },
      responses: {
        200: {
          description: 'A page of chunks (or an event stream)',
          content: { 'application/json': { schema: LogPage }, 'text/event-stream': { schema: z.string() } },
        },
        ...errorResponses,
        ...tooManyResponse,
      },
    }),
    async (c) => {
      const accountId = c.get('principal').accountId;
      const jobId = c.req.valid('param').id;
      const q = c.req.valid('query');
      if (q.follow === '1' || q.follow === 'true') {
        const principal = c.get('principal');
        const release = deps.logFollowers.reserve(principal.keyId);
        try {
          await getOwnJob(db, accountId, jobId);
        } catch (err) {
          release();
          throw err;
        }
        const lastEventId = Number(c.req.header('last-event-id'));
        const after = Number.isInteger(lastEventId) && lastEventId >= 0 ? lastEventId : cursorOf(q.cursor);
        return streamSSE(c, async (stream) => {
          try {
            await deps.logFollowers.follow({
              jobId,
              after,
              // The key that opened the stream must still hold: LogFollowers re-checks every key it holds, together.
              keyId: principal.keyId,
              sink: {
                send: (e) => stream.writeSSE(e),
                comment: (text) => stream.write(`: ${text}\n\n`).then(() => undefined),
                get aborted() {
                  return stream.aborted || stream.closed;
                },
                onAbort: (fn) => stream.onAbort(fn),
              },
            });
          } finally {
            release();
          }
        }) as never;
      }
      const after = cursorOf(q.cursor);
      const { job, items } = await readOwnLog(db, accountId, jobId, after, q.limit);
      const last = items.length ? items[items.length - 1]!.seq : after;
      const more = (await readChunks(db, jobId, last, 1)).length > 0;
      // Complete: the job had ended before this read, and nothing is stored past this page.
      return c.json({ items, nextCursor: more ? String(last) : null, complete: isTerminal(job.status) && !more }, 200);
    },
  );

  return app;
}
