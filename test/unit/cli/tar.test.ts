import { mkdir, mkdtemp, readFile, readdir, rm, symlink, writeFile } from 'node:fs/promises';
import { createReadStream } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { gzipSync } from 'node:zlib';
import tar from 'tar-stream';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ExtractLimitError, extractTar, fileDigest, packDirectory, safeEntryPath } from '../../../cli/tar.ts';

const roomy = { maxBytes: 1 << 30, maxEntries: 1000 };

async function tarOf(entries: { name: string; type?: 'file' | 'directory' | 'symlink' | 'link'; body?: string; linkname?: string }[]): Promise<Buffer> {
  const pack = tar.pack();
  for (const e of entries) {
    if (e.type === 'symlink' || e.type === 'link') pack.entry({ name: e.name, type: e.type, linkname: e.linkname ?? '/etc/passwd' });
    else if (e.type === 'directory') pack.entry({ name: e.name, type: 'directory' });
    else pack.entry({ name: e.name }, e.body ?? '');
  }
  pack.finalize();
  const chunks: Buffer[] = [];
  for await (const c of pack) chunks.push(Buffer.from(c as Uint8Array));
  return Buffer.concat(chunks);
}

let work: string;
beforeEach(async () => {
  work = await mkdtemp(join(tmpdir(), 'gantry-tar-'));
});
afterEach(async () => rm(work, { recursive: true, force: true }));

describe('extracting outputs', () => {
  it('unpacks files and folders, gzipped or not', async () => {
    const archive = await tarOf([{ name: 'result.json', body: '{"loss":0.1}' }, { name: 'ckpt/', type: 'directory' }, { name: 'ckpt/model.bin', body: 'weights' }]);
    for (const [i, bytes] of [archive, gzipSync(archive)].entries()) {
      const dir = join(work, `out${i}`);
      const got = await extractTar(Readable.from([bytes]), dir, roomy);
      expect(got).toEqual({ files: 2, bytes: 19, skipped: [] });
      expect(await readFile(join(dir, 'result.json'), 'utf8')).toBe('{"loss":0.1}');
      expect(await readFile(join(dir, 'ckpt/model.bin'), 'utf8')).toBe('weights');
    }
  });

  it('refuses entries that would land outside the folder, and links', async () => {
    const dir = join(work, 'out');
    const archive = await tarOf([
      { name: '../escaped', body: 'x' },
      { name: '/tmp/absolute-escape', body: 'x' },
      { name: 'a/../../escaped2', body: 'x' },
      { name: 'link', type: 'symlink', linkname: '/etc' },
      { name: 'hard', type: 'link', linkname: '/etc/passwd' },
      { name: 'ok.txt', body: 'fine' },
    ]);
    const got = await extractTar(Readable.from([archive]), dir, roomy);
    expect(got.files).toBe(1);
    expect(got.skipped).toHaveLength(5);
    expect(await readdir(dir)).toEqual(['ok.txt']);
    expect(await readdir(work)).toEqual(['out']);
  });

  it('does not write through a link already in the folder', async () => {
    const dir = join(work, 'out');
    const outside = join(work, 'outside');
    await mkdir(dir);
    await mkdir(outside);
    await symlink(outside, join(dir, 'sub'));
    await symlink(join(outside, 'target'), join(dir, 'file'));
    const archive = await tarOf([
      { name: 'sub/planted', body: 'x' },
      { name: 'file', body: 'x' },
    ]);
    const got = await extractTar(Readable.from([archive]), dir, roomy);
    expect(got.files).toBe(0);
    expect(got.skipped).toHaveLength(2);
    expect(await readdir(outside)).toEqual([]);
  });

  it('says why a path is refused', () => {
    expect(safeEntryPath('/r', 'a/b')).toEqual({ path: '/r/a/b' });
    expect(safeEntryPath('/r', './a')).toEqual({ path: '/r/a' });
    expect(safeEntryPath('/r', '../a')).toEqual({ refused: 'a ".." in its path' });
    expect(safeEntryPath('/r', '/etc/x')).toEqual({ refused: 'an absolute path' });
    expect(safeEntryPath('/r', 'a\0b')).toEqual({ refused: 'a NUL in its name' });
  });

  it('fails on a broken archive instead of hanging', async () => {
    await expect(extractTar(Readable.from([Buffer.from('not a tar at all, but long enough '.repeat(20))]), join(work, 'bad'), roomy)).rejects.toThrow();
  });
});

describe('extracting at most so much', () => {
  /** Sizes of every file under dir, in bytes, all together. */
  async function bytesUnder(dir: string): Promise<number> {
    let total = 0;
    for (const e of await readdir(dir, { withFileTypes: true, recursive: true })) {
      if (e.isFile()) total += (await readFile(join(e.parentPath, e.name))).length;
    }
    return total;
  }

  it('stops a gzip bomb at the size limit, having written no more than it', async () => {
    // 64 MiB of zeros in two files, about 64 KiB gzipped.
    const pack = tar.pack();
    pack.entry({ name: 'a.bin' }, Buffer.alloc(32 << 20));
    pack.entry({ name: 'b.bin' }, Buffer.alloc(32 << 20));
    pack.finalize();
    const parts: Buffer[] = [];
    for await (const c of pack) parts.push(Buffer.from(c as Uint8Array));
    const bomb = gzipSync(Buffer.concat(parts));
    expect(bomb.length).toBeLessThan(256 << 10);
    const dir = join(work, 'bomb');
    const err = await extractTar(Readable.from([bomb]), dir, { maxBytes: 40 << 20, maxEntries: 1000 }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ExtractLimitError);
    expect((err as ExtractLimitError).limit).toBe('bytes');
    expect((err as ExtractLimitError).so.files).toBe(1);
    expect(await bytesUnder(dir)).toBeLessThanOrEqual(40 << 20);
  });

  it('stops at the entry limit', async () => {
    const many = await tarOf(Array.from({ length: 50 }, (_, i) => ({ name: `f${i}.txt`, body: 'x' })));
    const dir = join(work, 'many');
    const err = await extractTar(Readable.from([many]), dir, { maxBytes: 1 << 20, maxEntries: 10 }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ExtractLimitError);
    expect((err as ExtractLimitError).limit).toBe('entries');
    expect((await readdir(dir)).length).toBe(10);
  });
});

describe('packing inputs', () => {
  it('packs a folder the same way every time and it unpacks to the same files', async () => {
    const src = join(work, 'data');
    await mkdir(join(src, 'nested'), { recursive: true });
    await writeFile(join(src, 'a.txt'), 'alpha');
    await writeFile(join(src, 'nested', 'b.txt'), 'beta');
    await symlink('/etc/passwd', join(src, 'link'));
    const first = await packDirectory(src, join(work, '1.tar'));
    const second = await packDirectory(src, join(work, '2.tar'));
    expect(first.digest).toMatch(/^sha256:[a-f0-9]{64}$/);
    expect(second.digest).toBe(first.digest);
    expect(first.files).toBe(2);
    expect(first.skipped).toEqual(['link']);
    expect(await fileDigest(join(work, '1.tar'))).toEqual({ digest: first.digest, size: first.size });
    const out = join(work, 'unpacked');
    await extractTar(createReadStream(join(work, '1.tar')), out, roomy);
    expect(await readFile(join(out, 'nested', 'b.txt'), 'utf8')).toBe('beta');
  });
});
