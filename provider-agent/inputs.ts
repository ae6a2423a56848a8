import { createHash } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { chmod, mkdir, rm } from 'node:fs/promises';
import { dirname, join, normalize, resolve, sep } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { Readable, Writable } from 'node:stream';
import * as tar from 'tar-stream';
import type { JobSpec } from '../shared/jobs.ts';

/** An input that could not be laid out: the job fails with this, before anything runs. */
export class InputError extends Error {}

type Fetch = (digest: string) => Promise<AsyncIterable<Uint8Array>>;

/** Resolves a relative path under root, refusing anything that would land outside it. */
export function inside(root: string, rel: string): string {
  const target = resolve(root, normalize(rel));
  if (target !== root && !target.startsWith(root.endsWith(sep) ? root : root + sep)) {
    throw new InputError(`${rel} would land outside ${root}`);
  }
  return target;
}

/** Streams a blob to a file, checking its sha256 on the way; a mismatch removes the file. */
async function download(fetchInput: Fetch, digest: string, file: string): Promise<void> {
  const hash = createHash('sha256');
  const body = await fetchInput(digest);
  await mkdir(dirname(file), { recursive: true });
  const hashing = async function* () {
    for await (const piece of body) {
      hash.update(piece);
      yield piece;
    }
  };
  await pipeline(Readable.from(hashing()), createWriteStream(file, { mode: 0o644 }));
  const got = `sha256:${hash.digest('hex')}`;
  if (got !== digest) {
    await rm(file, { force: true });
    throw new InputError(`input ${digest} arrived as ${got}: not used`);
  }
}

/** Unpacks a verified tar into dir: files and folders only (links and devices are skipped), never outside dir. */
async function untar(file: string, dir: string): Promise<void> {
  await mkdir(dir, { recursive: true, mode: 0o755 });
  const extract = tar.extract();
  const done = (async () => {
    for await (const entry of extract) {
      const h = entry.header;
      if (h.type === 'directory') {
        await mkdir(inside(dir, h.name), { recursive: true, mode: 0o755 });
        entry.resume();
      } else if (h.type === 'file' || h.type === 'contiguous-file') {
        const target = inside(dir, h.name);
        await mkdir(dirname(target), { recursive: true, mode: 0o755 });
        const mode = (h.mode ?? 0o644) & 0o111 ? 0o755 : 0o644;
        await pipeline(entry, createWriteStream(target, { mode }));
      } else {
        entry.resume();
      }
    }
  })();
  await Promise.all([pipeline(createReadStream(file), extract as unknown as Writable), done]);
}

/**
 * Lays the job's inputs out under dir (mounted read-only at /inputs): each blob fetched with the
 * lease and checked against its digest; a path ending in "/" is a folder the blob (a tar) is
 * unpacked into, any other path a file. Everything is readable by any user in the container.
 */
export async function prepareInputs(inputs: JobSpec['inputs'], dir: string, fetchInput: Fetch | undefined): Promise<void> {
  await mkdir(dir, { recursive: true, mode: 0o755 });
  await chmod(dir, 0o755);
  if (!inputs?.length) return;
  if (!fetchInput) throw new InputError('this agent cannot fetch inputs (no coordinator client in the runtime)');
  for (const [i, { digest, path }] of inputs.entries()) {
    // A task's spec names its own digest: one still naming a list per task is not a spec to run.
    if (!digest) throw new InputError(`input ${path} names no digest`);
    const input = { digest, path };
    if (input.path.endsWith('/')) {
      const temp = join(dirname(dir), `.input-${i}.tar`);
      try {
        await download(fetchInput, input.digest, temp);
        await untar(temp, inside(dir, input.path));
      } catch (err) {
        if (err instanceof InputError) throw err;
        throw new InputError(`input ${input.digest} for ${input.path} could not be unpacked: ${(err as Error).message}`);
      } finally {
        await rm(temp, { force: true });
      }
    } else {
      await download(fetchInput, input.digest, inside(dir, input.path)).catch((err) => {
        throw err instanceof InputError ? err : new InputError(`input ${input.digest} for ${input.path}: ${(err as Error).message}`);
      });
    }
  }
}
