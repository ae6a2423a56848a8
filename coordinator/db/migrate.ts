import { fileURLToPath } from 'node:url';
import { migrate as migratePglite } from 'drizzle-orm/pglite/migrator';
import { migrate as migratePostgres } from 'drizzle-orm/postgres-js/migrator';
import { sql } from 'drizzle-orm';
import type { Database } from './open.ts';

export const migrationsFolder = fileURLToPath(new URL('../../migrations', import.meta.url));

// Advisory lock keys: one number per purpose, in one place.
export const lockKeys = {
  migrate: 7_301_001,
  bootstrap: 7_301_002,
  scheduler: 7_301_003,
  // The one coordinator writing this step's pool_history row.
  poolHistory: 7_301_010,
} as const;

/** Applies the SQL migrations; under an advisory lock, since drizzle's migrator takes none. */
export async function migrate(database: Database): Promise<void> {
  await database.withAdvisoryLock(lockKeys.migrate, async () => {
    if (database.driver === 'pglite') {
      await migratePglite(database.db as never, { migrationsFolder });
    } else {
      await migratePostgres(database.db as never, { migrationsFolder });
    }
  });
}

/** True when every migration in the folder is recorded as applied. */
export async function migrationsApplied(database: Database, expected: number): Promise<boolean> {
  try {
    const rows = await database.rows<{ n: unknown }>(sql`select count(*) as n from drizzle.__drizzle_migrations`);
    return Number(rows[0]?.n ?? 0) >= expected;
  } catch {
    return false;
  }
}
