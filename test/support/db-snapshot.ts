import { sql } from 'drizzle-orm';
import type { Database } from '../../coordinator/db/open.ts';

/** The tables a client request can write: what "a bad request changes nothing" is checked on. */
export const requestTables = ['accounts', 'api_keys', 'jobs', 'job_events'] as const;

/**
 * Row count and a digest of every row of each table, so a test can show that a request changed
 * nothing. Left out: api_keys.last_used_at (using a key records it) and jobs.pending_reason (the
 * scheduler's note on a queued job, written in the background after a submit).
 */
export async function snapshot(database: Database, tables: readonly string[] = requestTables) {
  const out: Record<string, { rows: number; digest: string }> = {};
  const ignored = sql`array['last_used_at', 'pending_reason']::text[]`;
  for (const table of tables) {
    const row = (
      await database.rows<{ n: unknown; digest: string }>(sql`
        select count(*) as n,
               md5(coalesce(string_agg((to_jsonb(t) - ${ignored})::text, '|' order by (to_jsonb(t) - ${ignored})::text), '')) as digest
        from ${sql.identifier(table)} t`)
    )[0]!;
    out[table] = { rows: Number(row.n), digest: row.digest };
  }
  return out;
}

/** Counts rows of one table, optionally where a column equals a value. */
export async function countRows(database: Database, table: string, where?: { column: string; value: string }): Promise<number> {
  const filter = where ? sql` where ${sql.identifier(where.column)} = ${where.value}` : sql``;
  const row = (await database.rows<{ n: unknown }>(sql`select count(*) as n from ${sql.identifier(table)}${filter}`))[0]!;
  return Number(row.n);
}
