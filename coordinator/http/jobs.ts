import { createRoute, z } from '@hono/zod-openapi';
import { idPattern } from '../../shared/ids.ts';
import { Job, JobEventList, JobListQuery, JobSpec, TaskListQuery, type JobEvent } from '../../shared/jobs.ts';
import { PageQuery, pageOf } from '../../shared/pagination.ts';
import type { AppDeps } from '../deps.ts';
import { requireInputsUploaded } from '../blobs/service.ts';
import { listTasks, submitArray } from '../jobs/arrays.ts';
import { cancelJob, getOwnJob, listEvents, listJobs, submitJob, toApiJobAt, toApiJobs } from '../jobs/lifecycle.ts';
import { topics } from '../signals.ts';
import { bearerAuth, createRouter, errorResponses } from './router.ts';
import { requireKey } from './auth.ts';

const json = <T>(schema: T) => ({ content: { 'application/json': { schema } } });
const JobIdParam = z.object({ id: z.string().regex(idPattern('job'), 'not a job id') });
const IdempotencyHeaders = z.object({
  'idempotency-key': z.string().min(1).max(255).optional(),
});

export function jobRoutes(deps: AppDeps) {
  const app = createRouter();
  const { db } = deps.database;
  // Each route names who may call it: its key is checked before its input is read.
  const client = requireKey(deps.keys, 'client');
  const serviceUrlOf = (jobId: string) => deps.services.urls.urlOf(jobId);

  app.openapi(
    createRoute({
      method: 'post',
      path: '/v1/jobs',
      summary: 'Submit a job',
      security: bearerAuth,
      middleware: client,
      request: { headers: IdempotencyHeaders, body: { required: true, ...json(JobSpec) } },
      responses: {
        201: { description: 'Queued', ...json(Job) },
        200: { description: 'The job this Idempotency-Key already made', ...json(Job) },
        ...errorResponses,
      },
    }),
    async (c) => {
      const spec = c.req.valid('json');
      const key = c.req.valid('header')['idempotency-key'];
      // Inputs are uploaded first: a job naming bytes its owner never uploaded could never run.
      await requireInputsUploaded(db, c.get('principal').accountId, spec.inputs);
      const submit = spec.tasks ? submitArray : submitJob;
      const { job, replayed } = await submit(db, c.get('principal').accountId, spec, key, deps.clock.now());
      if (replayed) return c.json(await toApiJobAt(db, job, deps.clock.now(), serviceUrlOf), 200);
      deps.signals.emit(topics.schedule);
      return c.json(await toApiJobAt(db, job, deps.clock.now(), serviceUrlOf), 201);
    },
  );

  app.openapi(
    createRoute({
      method: 'get',
      path: '/v1/jobs',
      summary: 'List your jobs, newest first',
      security: bearerAuth,
      middleware: client,
      request: { query: PageQuery.extend(JobListQuery.shape).strict() },
      responses: { 200: { description: 'A page of jobs', ...json(pageOf(Job)) }, ...errorResponses },
    }),
    async (c) => {
      const q = c.req.valid('query');
      const page = await listJobs(db, c.get('principal').accountId, q);
      return c.json({ items: await toApiJobs(db, page.items, deps.clock.now(), serviceUrlOf), nextCursor: page.nextCursor }, 200);
    },
  );

  app.openapi(
    createRoute({
      method: 'get',
      path: '/v1/jobs/{id}',
      summary: 'Read a job',
      security: bearerAuth,
      middleware: client,
      request: { params: JobIdParam },
      responses: { 200: { description: 'The job', ...json(Job) }, ...errorResponses },
    }),
    async (c) => {
      const job = await getOwnJob(db, c.get('principal').accountId, c.req.valid('param').id);
      return c.json(await toApiJobAt(db, job, deps.clock.now(), serviceUrlOf), 200);
    },
  );

  app.openapi(
    createRoute({
      method: 'get',
      path: '/v1/jobs/{id}/tasks',
      summary: "A job array's tasks in index order (the cursor is the last index seen)",
      security: bearerAuth,
      middleware: client,
      request: { params: JobIdParam, query: TaskListQuery },
      responses: { 200: { description: 'A page of tasks', ...json(pageOf(Job)) }, ...errorResponses },
    }),
    async (c) => {
      const array = await getOwnJob(db, c.get('principal').accountId, c.req.valid('param').id);
      const page = await listTasks(db, array, c.req.valid('query'));
      return c.json({ items: await toApiJobs(db, page.items, deps.clock.now(), serviceUrlOf), nextCursor: page.nextCursor }, 200);
    },
  );

  app.openapi(
    createRoute({
      method: 'post',
      path: '/v1/jobs/{id}/cancel',
      summary: 'Cancel a job',
      security: bearerAuth,
      middleware: client,
      request: { params: JobIdParam },
      responses: { 200: { description: 'Cancelled, or cancel requested', ...json(Job) }, ...errorResponses },
    }),
    async (c) => {
      const job = await cancelJob(db, c.get('principal').accountId, c.req.valid('param').id, deps.clock.now());
      if (job.status === 'cancelled') deps.signals.emit(topics.schedule);
      return c.json(await toApiJobAt(db, job, deps.clock.now(), serviceUrlOf), 200);
    },
  );

  app.openapi(
    createRoute({
      method: 'get',
      path: '/v1/jobs/{id}/events',
      summary: "A job's state changes, oldest first",
      security: bearerAuth,
      middleware: client,
      request: { params: JobIdParam },
      responses: { 200: { description: 'Events', ...json(JobEventList) }, ...errorResponses },
    }),
    async (c) => {
      const rows = await listEvents(db, c.get('principal').accountId, c.req.valid('param').id);
      const items = rows.map((e) => ({
        id: e.id,
        at: e.at.toISOString(),
        from: e.fromStatus as JobEvent['from'],
        to: e.toStatus as JobEvent['to'],
        reason: e.reason,
      }));
      return c.json({ items }, 200);
    },
  );

  return app;
}
