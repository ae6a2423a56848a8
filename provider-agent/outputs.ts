import { createWriteStream } from 'node:fs';
import { openAsBlob } from 'node:fs';
import { lstat, open, readdir, readlink } from 'node:fs/promises';
import { join, relative } from 'node:path';
import { Readable } from 'node:stream';
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

/**
 * What result.json holds, judged without quoting it: a job can point it at any file the reader
 * could see, so a refusal says what is wrong and never shows a byte of the content.
 */
export function judgeResult(kind: 'file' | 'link' | 'other', size: number, read: () => Promise<string>): Promise<ResultRead> | ResultRead {
  if (kind === 'link') return { ok: false, why: 'result.json is a link, not a file' };
  if (kind === 'other') return { ok: false, why: 'result.json is not a regular file' };
  if (size > maxResultBytes) return { ok: false, why: `result.json is ${size} bytes, over the ${maxResultBytes}-byte limit` };
  return read().then((text) => {
    try {
      return { ok: true, value: JSON.parse(text.trim()) };
    } catch {
      return { ok: false, why: 'result.json is not valid JSON' };
    }
  });
}

/** /outputs/result.json in a folder of the agent's own (the process runtime): the link itself, never its target. */
export async function readResult(outputsDir: string): Promise<ResultRead> {
  const path = join(outputsDir, 'result.json');
  const s = await lstat(path).catch(() => null);
  if (!s) return null;
  const kind = s.isSymbolicLink() ? 'link' : s.isFile() ? 'file' : 'other';
  return judgeResult(kind, s.size, async () => (await openAsBlob(path)).text());
}

/** What a run left in /outputs, read once: result.json judged, the rest packed (capped). */
export interface OutputsRead {
  result: ResultRead;
  packed: PackedOutputs | null;
  /** Every entry read (folders, files, links), /outputs itself included. */
  entries: number;
  /** The length of the longest folder path read ("outputs/..."). */
  deepestFolder: number;
}

/**
 * Repacks the engine's archive of a container's /outputs (GET /containers/{id}/archive, whose
 * entries are named "outputs/...") into a tar of what is under it, files up to maxBytes of
 * content in all, and picks result.json out of it on the way. Links stay links: nothing is
 * followed, and nothing is read through a host path.
 */
export async function repackArchive(archive: AsyncIterable<Buffer> | Iterable<Buffer>, file: string, maxBytes: number): Promise<OutputsRead> {
  const pack = tar.pack();
  const written = pipeline(pack, createWriteStream(file, { mode: 0o600 }));
  const extract = tar.extract();
  let result: ResultRead = null;
  let bytes = 0;
  let files = 0;
  let skipped = 0;
  let packedEntries = 0;
  let entries = 0;
  let deepestFolder = 0;
  const reading = (async () => {
    for await (const entry of extract) {
      const h = entry.header;
      entries++;
      if (h.type === 'directory') deepestFolder = Math.max(deepestFolder, Buffer.byteLength(h.name));
      const slash = h.name.indexOf('/');
      const rel = slash < 0 ? '' : h.name.slice(slash + 1).replace(/\/$/, '');
      if (!rel) {
        entry.resume();
        continue;
      }
      const base = { name: rel, mode: (h.mode ?? 0o644) & 0o7777, mtime: h.mtime ?? new Date() };
      if (rel === 'result.json') {
        const kind = h.type === 'file' || h.type === 'contiguous-file' ? 'file' : h.type === 'symlink' || h.type === 'link' ? 'link' : 'other';
        const size = h.size ?? 0;
        if (kind === 'file' && size <= maxResultBytes) {
          const parts: Buffer[] = [];
          for await (const p of entry) parts.push(p as Buffer);
          const content = Buffer.concat(parts);
          result = await judgeResult('file', size, async () => content.toString('utf8'));
          if (bytes + size <= maxBytes) {
            await new Promise<void>((res, rej) => pack.entry({ ...base, type: 'file', size }, content, (e) => (e ? rej(e) : res())));
            bytes += size;
            files++;
            packedEntries++;
          } else skipped++;
          continue;
        }
        result = await judgeResult(kind, size, async () => '');
      }
      if (h.type === 'directory') {
        entry.resume();
        await new Promise<void>((res, rej) => pack.entry({ ...base, name: `${rel}/`, type: 'directory' }, (e) => (e ? rej(e) : res())));
        packedEntries++;
      } else if (h.type === 'symlink') {
        entry.resume();
        await new Promise<void>((res, rej) => pack.entry({ ...base, type: 'symlink', linkname: h.linkname ?? '' }, (e) => (e ? rej(e) : res())));
        packedEntries++;
      } else if ((h.type === 'file' || h.type === 'contiguous-file') && bytes + (h.size ?? 0) <= maxBytes) {
        const sink = pack.entry({ ...base, type: 'file', size: h.size ?? 0 });
        await pipeline(entry, sink);
        bytes += h.size ?? 0;
        files++;
        packedEntries++;
      } else {
        if (h.type === 'file' || h.type === 'contiguous-file') skipped++;
        entry.resume();
        await new Promise<void>((res) => entry.once('end', res));
      }
    }
  })();
  try {
    await Promise.all([pipeline(Readable.from(archive), extract as unknown as NodeJS.WritableStream), reading]);
  } finally {
    pack.finalize();
    await written;
  }
  return { result, packed: packedEntries ? { file, bytes, files, skipped } : null, entries, deepestFolder };
}

/**
 * What a run leaves in its outputs, made safe before its end is reported: result.json stored on
 * the job, the rest packed (capped) and uploaded with the lease. `read` is the runtime's way to
 * read them. A failure here is noted in the job's events and the agent's log; the run's own
 * outcome stands.
 */
export async function saveOutputs(
  ctx: Pick<ExecutionContext, 'onProgress' | 'uploadOutputs' | 'uploadResult'>,
  read: () => Promise<Pick<OutputsRead, 'result' | 'packed'>>,
  maxBytes: number,
  warn: (msg: string, fields?: Record<string, unknown>) => void,
): Promise<void> {
  try {
    const { result, packed } = await read();
    if (result && !result.ok) ctx.onProgress?.(`${result.why}: not stored on the job`);
    if (result?.ok && ctx.uploadResult) await ctx.uploadResult(result.value);
    if (!packed) return;
    if (packed.skipped) ctx.onProgress?.(`outputs over the ${maxBytes}-byte cap: ${packed.skipped} files left out`);
    if (ctx.uploadOutputs) await ctx.uploadOutputs(await openAsBlob(packed.file));
  } catch (err) {
    ctx.onProgress?.(`outputs not saved: ${(err as Error).message}`);
    warn('outputs not saved', { error: (err as Error).message });
  }
}

/** The process runtime's outputs: a folder of the agent's own, walked without following links. */
export const readOutputsDir = (dir: string, tarFile: string, maxBytes: number) => async () => ({
  result: await readResult(dir),
  packed: await packOutputs(dir, tarFile, maxBytes),
});
