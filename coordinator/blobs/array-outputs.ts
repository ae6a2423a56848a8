import { Readable, type Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { and, asc, eq, gt } from 'drizzle-orm';
import * as tar from 'tar-stream';
import type { DbOrTx } from '../db/open.ts';
import { jobOutputs, jobs } from '../db/schema/index.ts';
import type { BlobStore } from './store.ts';

// A job array's outputs as one tar: each task's stored tar (a plain tar, checked at upload)
// re-packed under task-<index>/, in index order, streamed as it is read.

const page = 200;

/** Where one entry of task `index`'s tar lands in the array's tar; a hard link's target moves with it. */
function moved(header: tar.Header, index: number): tar.Header {
  const name = `task-${index}/${header.name.replace(/^(\.\/)+/, '')}`;
  return header.type === 'link' && header.linkname ? { ...header, name, linkname: `task-${index}/${header.linkname.replace(/^(\.\/)+/, '')}` } : { ...header, name };
}

async function copyTask(pack: tar.Pack, body: AsyncIterable<Uint8Array>, index: number): Promise<void> {
  const extract = tar.extract();
  const done = (async () => {
    for await (const entry of extract) {
      const header = moved(entry.header, index);
      if (header.type === 'file' || header.type === 'contiguous-file') {
        await new Promise<void>((resolve, reject) => {
          const sink = pack.entry(header, (err) => (err ? reject(err) : resolve()));
          entry.pipe(sink);
        });
      } else {
        pack.entry(header);
        entry.resume();
      }
    }
  })();
  await Promise.all([pipeline(Readable.from(body), extract as unknown as Writable), done]);
}

/** The tar of every task of the array that stored outputs; an empty tar when none did. */
export function arrayOutputsTar(db: DbOrTx, blobs: BlobStore, arrayId: string): AsyncIterable<Uint8Array> {
  const pack = tar.pack();
  void (async () => {
    let after = -1;
    for (;;) {
      const rows = await db
        .select({ index: jobs.taskIndex, digest: jobOutputs.digest })
        .from(jobs)
        .innerJoin(jobOutputs, eq(jobOutputs.jobId, jobs.id))
        .where(and(eq(jobs.parentId, arrayId), gt(jobs.taskIndex, after)))
        .orderBy(asc(jobs.taskIndex))
        .limit(page);
      for (const r of rows) {
        const body = await blobs.open(r.digest);
        if (body) await copyTask(pack, body, r.index!);
      }
      if (rows.length < page) break;
      after = rows[rows.length - 1]!.index!;
    }
    pack.finalize();
  })().catch((err) => pack.destroy(err as Error));
  return pack as unknown as AsyncIterable<Uint8Array>;
}
