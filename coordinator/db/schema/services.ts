import { bigint, check, index, integer, pgTable, text, uniqueIndex } from 'drizzle-orm/pg-core';
import { sql } from 'drizzle-orm';
import { accounts } from './accounts.ts';
import { at, createdAt } from './columns.ts';
import { jobs } from './jobs.ts';

/**
 * A service job's readiness: the agent's probe passed under this lease epoch. A row from an
 * earlier epoch (the job was placed again) does not make the job ready.
 */
export const jobServices = pgTable('job_services', {
  jobId: text('job_id')
    .primaryKey()
    .references(() => jobs.id, { onDelete: 'cascade' }),
  epoch: integer('epoch').notNull(),
  readyAt: at('ready_at').notNull(),
  // Requests answered through the coordinators, all replicas together: each adds its count every few seconds.
  requests: bigint('requests', { mode: 'number' }).notNull().default(0),
});

/** Tokens that call one service job in its owner's stead: gst_<prefix>_<secret>, only the hash kept. */
export const serviceTokens = pgTable(
  'service_tokens',
  {
    id: text('id').primaryKey(),
    jobId: text('job_id')
      .notNull()
      .references(() => jobs.id, { onDelete: 'cascade' }),
    accountId: text('account_id')
      .notNull()
      .references(() => accounts.id),
    name: text('name').notNull(),
    prefix: text('prefix').notNull(),
    hash: text('hash').notNull(),
    createdAt: createdAt(),
    expiresAt: at('expires_at'),
    revokedAt: at('revoked_at'),
  },
  (t) => [
    uniqueIndex('service_tokens_prefix').on(t.prefix),
    index('service_tokens_job').on(t.jobId, t.id),
    check('service_tokens_name', sql`length(${t.name}) between 1 and 128`),
  ],
);

/**
 * Which coordinator replica holds a node's tunnel (the agent's one outbound connection), at which
 * internal address: another replica forwards a service request there.
 */
export const agentTunnels = pgTable('agent_tunnels', {
  nodeId: text('node_id').primaryKey(),
  replicaUrl: text('replica_url').notNull(),
  connectedAt: at('connected_at').notNull(),
});
