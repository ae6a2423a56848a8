import { createHash, randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DatabaseBlobStore } from '../../coordinator/blobs/db-store.ts';
import { BlobTooLargeError } from '../../coordinator/blobs/store.ts';
import { createTestDatabase, dbSkipReason, type TestDatabase } from '../support/database.ts';

const sha = (b: Buffer) => `sha256:${createHash('sha256').update(b).digest('hex')}`;

async function* pieces(b: Buffer, size: number) {
  for (let i = 0; i < b.length; i += size) yield b.subarray(i, i + size);
}

async function readAll(it: AsyncIterable<Uint8Array>) {
  const parts: Buffer[] = [];
  for await (const p of it) parts.push(Buffer.from(p));
  return Buffer.concat(parts);
}

describe.skipIf(dbSkipReason)('database blob store', () => {
  let t: TestDatabase;
  let store: DatabaseBlobStore;
  beforeAll(async () => {
    t = await createTestDatabase();
    store = new DatabaseBlobStore(t.database, 1000);
  });
  afterAll(async () => t?.drop());

  it('keeps bytes under their sha256 across chunk boundaries, whatever the pieces', async () => {
    for (const size of [0, 1, 999, 1000, 1001, 5432]) {
      const bytes = randomBytes(size);
      const put = await store.put(pieces(bytes, 333), 10_000);
      expect(put).toEqual({ digest: sha(bytes), size });
      expect(await store.has(put.digest)).toBe(true);
      expect((await readAll((await store.open(put.digest))!)).equals(bytes)).toBe(true);
    }
  });

  it('stores the same bytes once, even when uploaded twice at the same time', async () => {
    const bytes = randomBytes(4321);
    const [a, b] = await Promise.all([store.put(pieces(bytes, 100), 10_000), store.put(pieces(bytes, 700), 10_000)]);
    expect(a.digest).toBe(b.digest);
    expect(await store.storedBytes(a.digest)).toBe(4321);
    const rows = await t.database.rows<{ n: unknown }>(
      (await import('drizzle-orm')).sql`select count(*) as n from blob_chunks where digest like 'upload:%'`,
    );
    expect(Number(rows[0]!.n)).toBe(0);
  });

  it('refuses past the cap and keeps nothing of it', async () => {
    const bytes = randomBytes(2500);
    await expect(store.put(pieces(bytes, 400), 2499)).rejects.toBeInstanceOf(BlobTooLargeError);
    expect(await store.has(sha(bytes))).toBe(false);
    const rows = await t.database.rows<{ n: unknown }>(
      (await import('drizzle-orm')).sql`select count(*) as n from blob_chunks where digest like 'upload:%'`,
    );
    expect(Number(rows[0]!.n)).toBe(0);
  });

  it('answers null for a digest it does not hold', async () => {
    expect(await store.open(sha(Buffer.from('never stored')))).toBeNull();
    expect(await store.has(sha(Buffer.from('never stored')))).toBe(false);
  });
});
