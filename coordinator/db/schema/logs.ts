import { sql } from 'drizzle-orm';
import { bigint, check, customType, index, integer, pgTable, primaryKey, text } from 'drizzle-orm/pg-core';
import { accounts } from './accounts.ts';
import { at, createdAt } from './columns.ts';
import { jobs } from './jobs.ts';

const bytea = customType<{ data: Buffer; driverData: Buffer | Uint8Array }>({
  dataType: () => 'bytea',
  fromDriver: (v) => (Buffer.isBuffer(v) ? v : Buffer.from(v)),
});

// One row per chunk the agent shipped: lines of one stream, in order, joined by "\n".
export const jobLogs = pgTable(
  'job_logs',
  {
    jobId: text('job_id')
      .notNull()
      .references(() => jobs.id),
    // The agent's chunk number: a retried chunk lands on the same row.
    seq: integer('seq').notNull(),
    stream: text('stream', { enum: ['stdout', 'stderr', 'system'] }).notNull(),
    at: at('at').notNull(),
    lines: integer('lines').notNull(),
    // UTF-8 size of text, summed against the per-job cap without reading the text.
    bytes: integer('bytes').notNull(),
    text: text('text').notNull(),
  },
  (t) => [
    primaryKey({ columns: [t.jobId, t.seq] }),
    check('job_logs_counts', sql`${t.seq} >= 0 and ${t.lines} >= 0 and ${t.bytes} >= 0`),
    check('job_logs_stream', sql`${t.stream} in ('stdout', 'stderr', 'system')`),
  ],
);

// Who may read a blob: its uploader (content is shared by digest, ownership is per account).
export const blobs = pgTable(
  'blobs',
  {
    digest: text('digest').notNull(),
    accountId: text('account_id')
      .notNull()
      .references(() => accounts.id),
    size: bigint('size', { mode: 'number' }).notNull(),
    createdAt: createdAt(),
  },
  (t) => [primaryKey({ columns: [t.digest, t.accountId] }), check('blobs_size', sql`${t.size} >= 0`)],
);

// The database blob store's bytes, by digest; an upload in flight writes under "upload:<id>".
export const blobChunks = pgTable(
  'blob_chunks',
  {
    digest: text('digest').notNull(),
    seq: integer('seq').notNull(),
    data: bytea('data').notNull(),
  },
  (t) => [primaryKey({ columns: [t.digest, t.seq] })],
);

// What a job left in /outputs, packed as a tar by its agent: a blob owned by the job's owner.
export const jobOutputs = pgTable(
  'job_outputs',
  {
    jobId: text('job_id')
      .primaryKey()
      .references(() => jobs.id),
    digest: text('digest').notNull(),
    size: bigint('size', { mode: 'number' }).notNull(),
    createdAt: createdAt(),
  },
  (t) => [index('job_outputs_digest').on(t.digest), check('job_outputs_size', sql`${t.size} >= 0`)],
);
