import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { migrationFiles, migrationsFolder } from '../../../coordinator/db/migrate.ts';

describe('migrations/meta/_journal.json', () => {
  it("lists migrations whose `when` rises, each with its SQL file", () => {
    // drizzle skips a migration older than the newest applied one on an existing database (PITFALLS.md).
    const journal = JSON.parse(readFileSync(join(migrationsFolder, 'meta', '_journal.json'), 'utf8')) as {
      entries: { idx: number; tag: string; when: number }[];
    };
    expect(journal.entries.length).toBeGreaterThan(0);
    journal.entries.forEach((entry, i) => {
      expect(entry.idx).toBe(i);
      if (i > 0) expect(entry.when, `${entry.tag} is not newer than ${journal.entries[i - 1]!.tag}`).toBeGreaterThan(journal.entries[i - 1]!.when);
    });
    expect(migrationFiles().map((f) => f.tag)).toEqual(journal.entries.map((e) => e.tag));
  });
});
