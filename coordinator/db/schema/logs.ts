import { sql } from 'drizzle-orm';
import { bigint, check, customType, integer, pgTable, primaryKey, text } from 'drizzle-orm/pg-core';
import { accounts } from './accounts.ts';
import { at, createdAt } from './columns.ts';
import { jobs } from './jobs.ts';

const bytea = customType<{ data: Buffer; driverData: Buffer | Uint8Array }>({
  dataType: () => 'bytea',
  fromDriver: (v) => (Buffer.isBuffer(v) ? v : Buffer.from(v)),
});

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
    text: text('text').notNull(),
  },
  (t) => [primaryKey({ columns: [t.jobId, t.seq] })],
);

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

export const blobChunks = pgTable(
  'blob_chunks',
  {
    digest: text('digest').notNull(),
    seq: integer('seq').notNull(),
    data: bytea('data').notNull(),
  },
  (t) => [primaryKey({ columns: [t.digest, t.seq] })],
);
