import { createHash, randomBytes } from 'node:crypto';
import { and, eq, sql } from 'drizzle-orm';
import type { Database } from '../db/open.ts';
import { blobChunks } from '../db/schema/index.ts';
import { BlobTooLargeError, type BlobStore } from './store.ts';

/** Bytes per blob_chunks row: big enough to keep rows few, small enough to hold one in memory. */
export const defaultChunkBytes = 256 * 1024;

/**
 * Blobs as bytea chunks in the database. An upload writes its chunks under a name of its own
 * ("upload:<random>") while it streams, then renames them to the digest in one transaction
 * (or drops them when that digest is already stored), so a reader never sees half a blob and
 * memory holds at most one chunk.
 */
export class DatabaseBlobStore implements BlobStore {
  constructor(
    private database: Database,
    private chunkBytes = defaultChunkBytes,
  ) {}

  async put(source: AsyncIterable<Uint8Array>, maxBytes: number): Promise<{ digest: string; size: number }> {
    const { db } = this.database;
    const temp = `upload:${randomBytes(12).toString('hex')}`;
    const hash = createHash('sha256');
    let size = 0;
    let seq = 0;
    const buf = Buffer.allocUnsafe(this.chunkBytes);
    let filled = 0;
    const writeChunk = async () => {
      await db.insert(blobChunks).values({ digest: temp, seq: seq++, data: Buffer.from(buf.subarray(0, filled)) });
      filled = 0;
    };
    try {
      for await (const piece of source) {
        size += piece.length;
        if (size > maxBytes) throw new BlobTooLargeError(maxBytes);
        hash.update(piece);
        for (let off = 0; off < piece.length; ) {
          const take = Math.min(this.chunkBytes - filled, piece.length - off);
          buf.set(piece.subarray(off, off + take), filled);
          filled += take;
          off += take;
          if (filled === this.chunkBytes) await writeChunk();
        }
      }
      // An empty blob still gets its (empty) chunk 0, which is what marks a digest as stored.
      if (filled > 0 || seq === 0) await writeChunk();
      const digest = `sha256:${hash.digest('hex')}`;
      await this.commit(temp, digest);
      return { digest, size };
    } catch (err) {
      await db.delete(blobChunks).where(eq(blobChunks.digest, temp)).catch(() => {});
      throw err;
    }
  }

  private async commit(temp: string, digest: string): Promise<void> {
    const { db } = this.database;
    try {
      await db.transaction(async (tx) => {
        const [existing] = await tx
          .select({ seq: blobChunks.seq })
          .from(blobChunks)
          .where(and(eq(blobChunks.digest, digest), eq(blobChunks.seq, 0)));
        if (existing) await tx.delete(blobChunks).where(eq(blobChunks.digest, temp));
        else await tx.update(blobChunks).set({ digest }).where(eq(blobChunks.digest, temp));
      });
    } catch (err) {
      // Another upload of the same bytes committed first (unique violation): theirs stands.
      if (!(await this.has(digest))) throw err;
      await db.delete(blobChunks).where(eq(blobChunks.digest, temp));
    }
  }

  async has(digest: string): Promise<boolean> {
    const [row] = await this.database.db
      .select({ seq: blobChunks.seq })
      .from(blobChunks)
      .where(and(eq(blobChunks.digest, digest), eq(blobChunks.seq, 0)));
    return Boolean(row);
  }

  async open(digest: string): Promise<AsyncIterable<Uint8Array> | null> {
    if (!digest.startsWith('sha256:') || !(await this.has(digest))) return null;
    const { db } = this.database;
    return {
      async *[Symbol.asyncIterator]() {
        for (let seq = 0; ; seq++) {
          const [row] = await db
            .select({ data: blobChunks.data })
            .from(blobChunks)
            .where(and(eq(blobChunks.digest, digest), eq(blobChunks.seq, seq)));
          if (!row) return;
          if (row.data.length) yield row.data;
        }
      },
    };
  }

  /** Bytes stored for a digest (tests, admin). */
  async storedBytes(digest: string): Promise<number> {
    const rows = await this.database.rows<{ n: unknown }>(
      sql`select coalesce(sum(octet_length(data)), 0) as n from blob_chunks where digest = ${digest}`,
    );
    return Number(rows[0]?.n ?? 0);
  }
}
