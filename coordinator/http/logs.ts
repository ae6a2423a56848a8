import { createRoute, z } from '@hono/zod-openapi';
import { streamSSE, type SSEStreamingApi } from 'hono/streaming';
import { idPattern } from '../../shared/ids.ts';
import { isTerminal } from '../../shared/jobs.ts';
import { JobProgress, LogChunk, LogChunkAccepted, LogPage, LogQuery } from '../../shared/logs.ts';
import { requireKey } from '../auth/api-keys.ts';
import type { AppDeps } from '../deps.ts';
import { getOwnJob } from '../jobs/lifecycle.ts';
import { appendChunk, jobEndState, logTopic, readChunks, readOwnLog, recordProgress } from '../logs/service.ts';
import { requireAgent } from '../nodes/agent-auth.ts';
import { agentAuth, bearerAuth, createRouter, errorResponses } from './router.ts';

const json = <T>(schema: T) => ({ content: { 'application/json': { schema } } });
const JobIdParam = z.object({ id: z.string().regex(idPattern('job'), 'not a job id') });

/** How long a follower waits for news before it looks at the database again (other replicas' chunks). */
const followPollMs = 1000;
const keepaliveMs = 15_000;
const followBatchLines = 10_000;

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
        'follow=1 answers text/event-stream: `log` events (id = seq, data = a chunk), then one `end` event. ' +
        'Authenticate with the Authorization header (read it with fetch streaming; EventSource cannot send one).',
      security: bearerAuth,
      request: { params: JobIdParam, query: LogQuery },
      responses: {
        200: {
          description: 'A page of chunks (or an event stream)',
          content: { 'application/json': { schema: LogPage }, 'text/event-stream': { schema: z.string() } },
        },
        ...errorResponses,
      },
    }),
    async (c) => {
      const accountId = c.get('principal').accountId;
      const jobId = c.req.valid('param').id;
      const q = c.req.valid('query');
      if (q.follow === '1' || q.follow === 'true') {
        await getOwnJob(db, accountId, jobId);
        const lastEventId = Number(c.req.header('last-event-id'));
        const after = Number.isInteger(lastEventId) && lastEventId >= 0 ? lastEventId : cursorOf(q.cursor);
        return streamSSE(c, (stream) => follow(deps, stream, jobId, after)) as never;
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

/** Sends chunks as they are stored until the job has ended and its last chunk is out. */
async function follow(deps: AppDeps, stream: SSEStreamingApi, jobId: string, after: number) {
  const { db } = deps.database;
  let wake: (() => void) | null = null;
  const off = deps.signals.on(logTopic(jobId), () => wake?.());
  stream.onAbort(() => wake?.());
  let lastWrite = Date.now();
  try {
    while (!stream.aborted && !stream.closed) {
      const items = await readChunks(db, jobId, after, followBatchLines);
      for (const item of items) {
        await stream.writeSSE({ event: 'log', id: String(item.seq), data: JSON.stringify(item) });
        after = item.seq;
      }
      if (items.length) {
        lastWrite = Date.now();
        continue;
      }
      const job = await jobEndState(db, jobId);
      if (!job || isTerminal(job.status)) {
        // The agent ships every chunk before it reports the end: one more read catches a race.
        if ((await readChunks(db, jobId, after, 1)).length) continue;
        const end = { status: job?.status ?? 'unknown', exitCode: job?.exitCode ?? null, error: job?.error ?? null };
        await stream.writeSSE({ event: 'end', data: JSON.stringify(end) });
        return;
      }
      if (Date.now() - lastWrite >= keepaliveMs) {
        await stream.write(': keepalive\n\n');
        lastWrite = Date.now();
      }
      await new Promise<void>((resolve) => {
        const timer = setTimeout(done, followPollMs);
        function done() {
          clearTimeout(timer);
          wake = null;
          resolve();
        }
        wake = done;
      });
    }
  } finally {
    off();
  }
}
