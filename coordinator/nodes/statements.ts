import type { Database, DbOrTx } from '../db/open.ts';

// The heartbeat's statement runs 2,000 times a second at 10,000 nodes: its text is built once,
// and on PostgreSQL it is a prepared statement (postgres.js prepares it once per connection),
// where drizzle would rebuild the SQL and PostgreSQL re-plan it on every call. Parameters are
// passed as text and cast in the SQL, so that no driver re-encodes them by the column type.

interface PostgresJsClient {
  unsafe(text: string, params: unknown[], opts: { prepare: boolean }): Promise<unknown[]>;
}
interface PgliteClient {
  query(text: string, params: unknown[]): Promise<{ rows: unknown[] }>;
}

/** Runs fixed SQL text with positional parameters ($1, $2, …): in the transaction, on its connection, or on its own. */
export async function runStatement<T>(database: Pick<Database, 'driver'>, tx: DbOrTx, text: string, params: (string | number | null)[]): Promise<T[]> {
  // drizzle keeps the driver's client (the transaction's, in one) on its session (drizzle-orm 0.45, both drivers).
  const client = (tx as unknown as { session: { client: unknown } }).session.client;
  if (database.driver === 'postgres') return (await (client as PostgresJsClient).unsafe(text, params, { prepare: true })) as T[];
  return (await (client as PgliteClient).query(text, params)).rows as T[];
}
