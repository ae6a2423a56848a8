import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { migrate as migratePglite } from 'drizzle-orm/pglite/migrator';
import { migrate as migratePostgres } from 'drizzle-orm/postgres-js/migrator';
import { sql } from 'drizzle-orm';
import { toNumber, type Database } from './open.ts';

export const migrationsFolder = fileURLToPath(new URL('../../migrations', import.meta.url));

// Advisory lock keys: one number per purpose, in one place.
export const lockKeys = {
  migrate: 7_301_001,
  bootstrap: 7_301_002,
  scheduler: 7_301_003,
  // The one coordinator writing this step's pool_history row.
  poolHistory: 7_301_010,
} as const;

/** One migration file as drizzle's migrator sees it: its journal `when` and the sha256 of its text. */
export interface MigrationFile {
  tag: string;
  when: number;
  hash: string;
}

/** The migrations in a folder, in journal order, hashed the way drizzle records them. */
export function migrationFiles(folder = migrationsFolder): MigrationFile[] {
  const journal = JSON.parse(readFileSync(join(folder, 'meta', '_journal.json'), 'utf8')) as {
    entries: { tag: string; when: number }[];
  };
  return journal.entries.map(({ tag, when }) => ({
    tag,
    when,
    hash: createHash('sha256').update(readFileSync(join(folder, `${tag}.sql`), 'utf8')).digest('hex'),
  }));
}

/** The database holds migrations this release does not have, or lacks ones it would skip: starting would fail or lose data. */
export class MigrationMismatchError extends Error {}

interface AppliedMigration {
  hash: string;
  when: number;
}

async function appliedMigrations(database: Database): Promise<AppliedMigration[]> {
  const [table] = await database.rows<{ name: unknown }>(sql`select to_regclass('drizzle.__drizzle_migrations')::text as name`);
  if (!table?.name) return [];
  const rows = await database.rows<{ hash: string; created_at: unknown }>(
    sql`select hash, created_at from drizzle.__drizzle_migrations order by created_at, id`,
  );
  return rows.map((r) => ({ hash: r.hash, when: toNumber(r.created_at) }));
}

const stamp = (when: number) => new Date(when).toISOString();

/**
 * Why this database cannot be migrated by these files, or null when it can. drizzle runs every
 * file whose `when` is newer than the newest applied one and silently skips older ones, so an
 * edited or reordered migration fails on its first CREATE (or never runs): compare first.
 */
export function migrationMismatch(applied: AppliedMigration[], files: MigrationFile[]): string | null {
  for (const row of applied) {
    const file = files.find((f) => f.when === row.when);
    if (!file) {
      const sameText = files.find((f) => f.hash === row.hash);
      return sameText
        ? `migration ${sameText.tag} was applied with journal time ${stamp(row.when)} but the file now says ${stamp(sameText.when)}`
        : `the database has a migration (journal time ${stamp(row.when)}, sha256 ${row.hash.slice(0, 12)}) that migrations/ does not hold: it was made by another build`;
    }
    if (file.hash !== row.hash) {
      return `migrations/${file.tag}.sql differs from the one applied to the database (sha256 ${file.hash.slice(0, 12)} here, ${row.hash.slice(0, 12)} applied)`;
    }
  }
  const newest = Math.max(0, ...applied.map((r) => r.when));
  const skipped = files.find((f) => f.when <= newest && !applied.some((r) => r.when === f.when));
  if (skipped) return `migrations/${skipped.tag}.sql is older than the newest migration applied to the database and would never run`;
  return null;
}

/**
 * Applies the SQL migrations; under an advisory lock, since drizzle's migrator takes none.
 * Refuses (MigrationMismatchError) a database whose applied migrations differ from the files.
 */
export async function migrate(database: Database, folder = migrationsFolder): Promise<void> {
  const files = migrationFiles(folder);
  await database.withAdvisoryLock(lockKeys.migrate, async () => {
    const mismatch = migrationMismatch(await appliedMigrations(database), files);
    if (mismatch) {
      throw new MigrationMismatchError(
        `database schema does not match this release: ${mismatch}; start the release that made this database, or a fresh one`,
      );
    }
    if (database.driver === 'pglite') {
      await migratePglite(database.db as never, { migrationsFolder: folder });
    } else {
      await migratePostgres(database.db as never, { migrationsFolder: folder });
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
