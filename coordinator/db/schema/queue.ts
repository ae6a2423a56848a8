import { jsonb, pgTable, text } from 'drizzle-orm/pg-core';
import { at } from './columns.ts';

/**
 * Why the queued jobs of one shape (jobs.queue_shape) wait, as the scheduler last found it: one
 * row per shape that fits nowhere, so a backlog of a hundred thousand jobs is explained by a
 * handful of writes instead of one per job. GET /v1/jobs/:id shows it for a queued job.
 */
export const queueReasons = pgTable('queue_reasons', {
  shape: text('shape').primaryKey(),
  reason: text('reason').notNull(),
  // What the shape asks for (scheduler/feasibility.ts JobRequest): its reason can be worked out
  // again as nodes come and go, without reading its jobs.
  request: jsonb('request').$type<Record<string, unknown>>().notNull(),
  updatedAt: at('updated_at').notNull().defaultNow(),
});
