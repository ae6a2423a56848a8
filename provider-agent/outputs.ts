import { createWriteStream } from 'node:fs';
import { openAsBlob } from 'node:fs';
import { lstat, open, readdir, readlink, stat } from 'node:fs/promises';
import { join, relative } from 'node:path';
import { pipeline } from 'node:stream/promises';
import * as tar from 'tar-stream';

type TarHeader = Partial<tar.Header> & { name: string };
import { maxResultBytes } from '../shared/blobs.ts';
import type { ExecutionContext } from './runtime/executor.ts';

export const defaultOutputsMaxBytes = 256 * 1024 * 1024;

export interface PackedOutputs {
  file: string;
  /** Bytes of file content packed. */
  bytes: number;
  files: number;
  /** Files left out because the cap was reached. */
  skipped: number;
}

/** Every path under dir, folders before what they hold, in a stable order. */
async function* walk(dir: string, root = dir): AsyncGenerator<{ path: string; rel: string }> {
  const entries = (await readdir(dir, { withFileTypes: true })).sort((a, b) => (a.name < b.name ? -1 : 1));
  for (const e of entries) {
    const path = join(dir, e.name);
    yield { path, rel: relative(root, path) };
    if (e.isDirectory()) yield* walk(path, root);
  }
}

/**
 * Packs what the job left in dir into a tar file, files up to maxBytes of content in all (files
 * past the cap are left out and counted). Folders, files and symlinks are kept; anything else
 * (sockets, devices) is skipped. Null when dir holds nothing.
 */
export async function packOutputs(dir: string, file: string, maxBytes: number): Promise<PackedOutputs | null> {
  const pack = tar.pack();
  const written = pipeline(pack, createWriteStream(file, { mode: 0o600 }));
  let bytes = 0;
  let files = 0;
  let skipped = 0;
  let entries = 0;
  try {
    for await (const { path, rel } of walk(dir)) {
      const s = await lstat(path);
      const base = { name: rel, mode: s.mode & 0o7777, mtime: s.mtime };
      if (s.isDirectory()) {
        await entry(pack, { ...base, name: `${rel}/`, type: 'directory' });
      } else if (s.isSymbolicLink()) {
        await entry(pack, { ...base, type: 'symlink', linkname: await readlink(path) });
      } else if (s.isFile()) {
        if (bytes + s.size > maxBytes) {
          skipped++;
          continue;
        }
        await fileEntry(pack, { ...base, type: 'file', size: s.size }, path);
        bytes += s.size;
        files++;
      } else {
        continue;
      }
      entries++;
    }
  } finally {
    pack.finalize();
    await written;
  }
  return entries ? { file, bytes, files, skipped } : null;
}

function entry(pack: tar.Pack, header: TarHeader): Promise<void> {
  return new Promise((resolve, reject) => pack.entry(header, (err) => (err ? reject(err) : resolve())));
}

async function fileEntry(pack: tar.Pack, header: TarHeader, path: string): Promise<void> {
  const fh = await open(path, 'r');
  try {
    const sink = pack.entry(header);
    const done = new Promise<void>((resolve, reject) => {
      sink.on('finish', resolve);
      sink.on('error', reject);
    });
    // Exactly header.size bytes: a file the job still grows must not break the archive.
    let left = header.size ?? 0;
    const buf = Buffer.allocUnsafe(64 * 1024);
    while (left > 0) {
      const { bytesRead } = await fh.read(buf, 0, Math.min(buf.length, left));
      if (bytesRead === 0) break;
      left -= bytesRead;
      if (!sink.write(Buffer.from(buf.subarray(0, bytesRead)))) await new Promise<void>((r) => sink.once('drain', () => r()));
    }
    // A file the job shrank meanwhile is padded, so the entry still has the size its header says.
    sink.end(Buffer.alloc(Math.max(0, left)));
    await done;
  } finally {
    await fh.close();
  }
}

export type ResultRead = { ok: true; value: unknown } | { ok: false; why: string } | null;

/** /outputs/result.json when present: its value if it is valid JSON of at most maxResultBytes. */
export async function readResult(outputsDir: string): Promise<ResultRead> {
  const path = join(outputsDir, 'result.json');
  const s = await stat(path).catch(() => null);
  if (!s) return null;
  if (!s.isFile()) return { ok: false, why: 'result.json is not a file' };
  if (s.size > maxResultBytes) return { ok: false, why: `result.json is ${s.size} bytes, over the ${maxResultBytes}-byte limit` };
  const text = (await (await openAsBlob(path)).text()).trim();
  try {
    return { ok: true, value: JSON.parse(text) };
  } catch (err) {
    return { ok: false, why: `result.json is not valid JSON (${(err as Error).message})` };
  }
}


/**
 * What a run leaves in its outputs folder, made safe before its end is reported: result.json
 * stored on the job, the folder packed (capped) and uploaded with the lease. A failure here is
 * noted in the job's events and the agent's log; the run's own outcome stands.
 */
export async function saveOutputs(
  ctx: Pick<ExecutionContext, 'onProgress' | 'uploadOutputs' | 'uploadResult'>,
  outputsDir: string,
  tarFile: string,
  maxBytes: number,
  warn: (msg: string, fields?: Record<string, unknown>) => void,
): Promise<void> {
  try {
    const result = await readResult(outputsDir);
    if (result && !result.ok) ctx.onProgress?.(`${result.why}: not stored on the job`);
    if (result?.ok && ctx.uploadResult) await ctx.uploadResult(result.value);
    const packed = await packOutputs(outputsDir, tarFile, maxBytes);
    if (!packed) return;
    if (packed.skipped) ctx.onProgress?.(`outputs over the ${maxBytes}-byte cap: ${packed.skipped} files left out`);
    if (ctx.uploadOutputs) await ctx.uploadOutputs(await openAsBlob(packed.file));
  } catch (err) {
    ctx.onProgress?.(`outputs not saved: ${(err as Error).message}`);
    warn('outputs not saved', { error: (err as Error).message });
  }
}
