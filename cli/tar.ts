import { createHash } from 'node:crypto';
import { constants, createReadStream, createWriteStream } from 'node:fs';
import { lstat, mkdir, open, readdir, realpath, stat } from 'node:fs/promises';
import { isAbsolute, join, relative, resolve, sep } from 'node:path';
import { PassThrough, Readable, Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { createGunzip } from 'node:zlib';
import tar, { type Header } from 'tar-stream';

// Inputs go up as a tar of a folder; outputs come back as one. Packing keeps regular files and
// folders only, in a fixed order, so the same folder gives the same digest. Extracting never
// writes outside the target folder: no absolute paths, no "..", no links, no writing through a
// link that is already there.

export interface Packed {
  digest: string;
  size: number;
  files: number;
  skipped: string[];
}

/** Writes a tar of dir's contents to outFile and returns its sha256 digest. */
export async function packDirectory(dir: string, outFile: string): Promise<Packed> {
  const pack = tar.pack();
  const hash = createHash('sha256');
  let size = 0;
  const counter = new Transform({
    transform(chunk: Buffer, _enc, cb) {
      hash.update(chunk);
      size += chunk.length;
      cb(null, chunk);
    },
  });
  const written = pipeline(pack, counter, createWriteStream(outFile, { mode: 0o600 }));
  const skipped: string[] = [];
  let files = 0;
  const addEntry = (header: Partial<Header> & { name: string }, source?: Readable) =>
    new Promise<void>((ok, fail) => {
      const entry = pack.entry(header, (err) => (err ? fail(err) : ok()));
      if (source) {
        source.on('error', fail);
        source.pipe(entry);
      }
      // A folder entry has no body and ends by itself.
    });
  async function walk(abs: string, rel: string) {
    const names = (await readdir(abs)).sort();
    for (const name of names) {
      const p = join(abs, name);
      const r = rel ? `${rel}/${name}` : name;
      const st = await lstat(p);
      if (st.isDirectory()) {
        await addEntry({ name: `${r}/`, type: 'directory', mode: st.mode & 0o755, mtime: st.mtime, uid: 0, gid: 0 });
        await walk(p, r);
      } else if (st.isFile()) {
        await addEntry({ name: r, type: 'file', size: st.size, mode: st.mode & 0o755, mtime: st.mtime, uid: 0, gid: 0 }, createReadStream(p));
        files++;
      } else {
        skipped.push(r);
      }
    }
  }
  try {
    await walk(dir, '');
    pack.finalize();
  } catch (err) {
    pack.destroy(err as Error);
    await written.catch(() => {});
    throw err;
  }
  await written;
  return { digest: `sha256:${hash.digest('hex')}`, size, files, skipped };
}

export async function fileDigest(file: string): Promise<{ digest: string; size: number }> {
  const hash = createHash('sha256');
  let size = 0;
  for await (const chunk of createReadStream(file)) {
    hash.update(chunk as Buffer);
    size += (chunk as Buffer).length;
  }
  return { digest: `sha256:${hash.digest('hex')}`, size };
}

export interface Extracted {
  files: number;
  bytes: number;
  /** Entries left out, each with why. */
  skipped: string[];
}

/** Where an entry may land inside root, or why it may not. */
export function safeEntryPath(root: string, name: string): { path: string } | { refused: string } {
  if (name.includes('\0')) return { refused: 'a NUL in its name' };
  const clean = name.replace(/^(\.\/)+/, '');
  if (isAbsolute(clean) || /^[A-Za-z]:[\\/]/.test(clean)) return { refused: 'an absolute path' };
  if (clean.split(/[\\/]/).includes('..')) return { refused: 'a ".." in its path' };
  const target = resolve(root, clean);
  const rel = relative(root, target);
  if (rel.startsWith('..') || isAbsolute(rel)) return { refused: 'a path outside the folder' };
  return { path: target };
}

/** How much an archive may put on disk: a small archive (gzipped, above all) can unpack to terabytes. */
export interface ExtractLimits {
  maxBytes: number;
  maxEntries: number;
}

/** The archive went past a limit: unpacking stopped there, with what was written so far. */
export class ExtractLimitError extends Error {
  constructor(
    readonly limit: 'bytes' | 'entries',
    readonly so: Extracted,
  ) {
    super(limit === 'bytes' ? 'over the size limit' : 'over the entry limit');
  }
}

/**
 * Reads a tar (gzipped or not) and unpacks it under dir, refusing whatever would leave it, and
 * stopping (ExtractLimitError) before it writes more bytes or takes more entries than allowed.
 */
export async function extractTar(source: AsyncIterable<Uint8Array>, dir: string, limits: ExtractLimits): Promise<Extracted> {
  await mkdir(dir, { recursive: true });
  const root = await realpath(dir);
  const result: Extracted = { files: 0, bytes: 0, skipped: [] };
  const extract = tar.extract();
  const input = await maybeGunzip(source);
  const feeding = pipeline(input, extract);
  // Awaited after the loop; a broken archive also ends the loop with the same error.
  feeding.catch(() => {});

  const inside = async (p: string) => {
    const real = await realpath(p);
    return real === root || real.startsWith(root + sep);
  };

  let entries = 0;
  for await (const entry of extract) {
    const { header } = entry;
    if (++entries > limits.maxEntries) throw new ExtractLimitError('entries', result);
    const where = safeEntryPath(root, header.name);
    const type = header.type ?? 'file';
    if ('refused' in where) {
      result.skipped.push(`${header.name} (${where.refused})`);
      entry.resume();
      continue;
    }
    if (type === 'directory') {
      await mkdir(where.path, { recursive: true, mode: 0o755 });
      if (!(await inside(where.path))) result.skipped.push(`${header.name} (leads outside the folder)`);
      entry.resume();
      continue;
    }
    if (type !== 'file' && type !== 'contiguous-file') {
      result.skipped.push(`${header.name} (a ${type}, not a file)`);
      entry.resume();
      continue;
    }
    const parent = resolve(where.path, '..');
    await mkdir(parent, { recursive: true, mode: 0o755 });
    if (!(await inside(parent))) {
      result.skipped.push(`${header.name} (leads outside the folder through a link)`);
      entry.resume();
      continue;
    }
    // The header says how big the file is: refuse it before writing any of it.
    if (result.bytes + (header.size ?? 0) > limits.maxBytes) throw new ExtractLimitError('bytes', result);
    const existing = await lstat(where.path).catch(() => null);
    if (existing && !existing.isFile()) {
      result.skipped.push(`${header.name} (would replace a ${existing.isSymbolicLink() ? 'link' : 'non-file'})`);
      entry.resume();
      continue;
    }
    // O_NOFOLLOW: a link slipped in after the check is refused by the kernel, not followed.
    const fh = await open(where.path, constants.O_WRONLY | constants.O_CREAT | constants.O_TRUNC | constants.O_NOFOLLOW, (header.mode ?? 0o644) & 0o755);
    try {
      for await (const chunk of entry) {
        if (result.bytes + (chunk as Buffer).length > limits.maxBytes) throw new ExtractLimitError('bytes', result);
        await fh.write(chunk as Buffer);
        result.bytes += (chunk as Buffer).length;
      }
    } finally {
      await fh.close();
    }
    result.files++;
  }
  await feeding;
  return result;
}

async function maybeGunzip(source: AsyncIterable<Uint8Array>): Promise<Readable> {
  const it = source[Symbol.asyncIterator]();
  const first = await it.next();
  const head = first.done ? Buffer.alloc(0) : Buffer.from(first.value);
  async function* all() {
    if (head.length) yield head;
    for (let r = await it.next(); !r.done; r = await it.next()) yield Buffer.from(r.value);
  }
  const raw = Readable.from(all());
  if (head[0] === 0x1f && head[1] === 0x8b) {
    const out = new PassThrough();
    pipeline(raw, createGunzip(), out).catch((err) => out.destroy(err as Error));
    return out;
  }
  return raw;
}

export async function isDirectory(path: string): Promise<boolean> {
  return (await stat(path)).isDirectory();
}
