import { it } from 'vitest';
import { randomBytes } from 'node:crypto';
import postgres from 'postgres';
import { migrate } from '../../coordinator/db/migrate.ts';
import { openDatabase, type Database } from '../../coordinator/db/open.ts';

/** Which database this test run uses: vitest's pglite and postgres projects set it. */
export const dbKind: 'pglite' | 'postgres' = process.env.GANTRY_TEST_DB === 'postgres' ? 'postgres' : 'pglite';
export const postgresAdminUrl = process.env.GANTRY_TEST_POSTGRES_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres';

/**
 * Why PostgreSQL tests cannot run here, or null when they can. CI sets GANTRY_REQUIRE_POSTGRES=1,
 * which turns a missing server into a failure instead of a skip.
 */
export async function postgresSkipReason(what = 'postgres tests'): Promise<string | null> {
  const sql = postgres(postgresAdminUrl, { max: 1, connect_timeout: 3, onnotice: () => {} });
  try {
    await sql`select 1`;
    return null;
  } catch (err) {
    const why = `PostgreSQL at ${postgresAdminUrl.replace(/\/\/[^@]*@/, '//')} is not reachable (${(err as Error).message})`;
    if (process.env.GANTRY_REQUIRE_POSTGRES === '1') throw new Error(`${why}, and GANTRY_REQUIRE_POSTGRES=1 says these tests must run`);
    console.warn(`${what} skipped: ${why}`);
    return why;
  } finally {
    await sql.end({ timeout: 1 }).catch(() => {});
  }
}

/** Why this file's database tests cannot run, or null when they can. */
export const dbSkipReason: string | null = dbKind === 'postgres' ? await postgresSkipReason() : null;

let pgliteTemplate: Promise<Blob> | null = null;

/** A migrated PGlite dump, made once per worker: loading it is four times quicker than a fresh start. */
function template(): Promise<Blob> {
  pgliteTemplate ??= (async () => {
    const d = await openDatabase({ dataDir: 'memory://' });
    await migrate(d);
    const client = (d.db as unknown as { $client: { dumpDataDir(c: 'none'): Promise<Blob> } }).$client;
    const dump = await client.dumpDataDir('none');
    await d.close();
    return dump;
  })();
  return pgliteTemplate;
}

export interface TestDatabase {
  database: Database;
  /** A postgres:// URL for other processes (PostgreSQL only). */
  url: string | null;
  drop(): Promise<void>;
}

/** PostgreSQL: connections of a test database's pool, and of its heartbeats' own (as a coordinator opens it). */
export const testPoolSize = 10;
const testHeartbeatPoolSize = 2;

/** A fresh, migrated database of this run's kind; drop() closes and (PostgreSQL) drops it. */
export async function createTestDatabase(): Promise<TestDatabase> {
  if (dbKind === 'pglite') {
    const database = await openDatabase({ dataDir: 'memory://', loadDataDir: await template() });
    return { database, url: null, drop: () => database.close() };
  }
  const name = `gantry_test_${randomBytes(6).toString('hex')}`;
  const admin = postgres(postgresAdminUrl, { max: 1, onnotice: () => {} });
  await admin.unsafe(`create database ${name}`);
  const url = postgresAdminUrl.replace(/\/[^/]*$/, `/${name}`);
  const database = await openDatabase({ databaseUrl: url, poolSize: testPoolSize, heartbeatPoolSize: testHeartbeatPoolSize });
  await migrate(database);
  return {
    database,
    url,
    async drop() {
      await database.close();
      await admin.unsafe(`drop database if exists ${name} with (force)`);
      await admin.end({ timeout: 5 });
    },
  };
}

/**
 * `it` for a test that means something on one database only (an advisory lock, a second
 * connection): registered in that database's run alone, so the other run shows no skip.
 */
export function itOn(kind: 'pglite' | 'postgres'): typeof it {
  return (kind === dbKind ? it : () => {}) as typeof it;
}
