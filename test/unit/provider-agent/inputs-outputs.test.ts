import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { lstat, mkdir, mkdtemp, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import * as tar from 'tar-stream';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { InputError, prepareInputs } from '../../../provider-agent/inputs.ts';
import { packOutputs, readResult, repackArchive } from '../../../provider-agent/outputs.ts';

const sha = (b: Buffer) => `sha256:${createHash('sha256').update(b).digest('hex')}`;

type Entry = Partial<tar.Header> & { name: string; body?: string };

async function tarOf(entries: Entry[]): Promise<Buffer> {
  const pack = tar.pack();
  for (const e of entries) {
    const { body, ...header } = e;
    pack.entry(header, body ?? '');
  }
  pack.finalize();
  const parts: Buffer[] = [];
  for await (const p of pack) parts.push(p as Buffer);
  return Buffer.concat(parts);
}

async function untar(file: string): Promise<Map<string, { type: string; body: string }>> {
  const out = new Map<string, { type: string; body: string }>();
  const extract = tar.extract();
  const done = (async () => {
    for await (const entry of extract) {
      const parts: Buffer[] = [];
      for await (const p of entry) parts.push(p as Buffer);
      out.set(entry.header.name, { type: entry.header.type, body: Buffer.concat(parts).toString() });
    }
  })();
  createReadStream(file).pipe(extract as never);
  await done;
  return out;
}

let dir: string;
beforeEach(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'gantry-io-'));
});
afterEach(async () => rm(dir, { recursive: true, force: true }));

/** Blobs as the coordinator would serve them, by digest, in pieces. */
const serve = (blobs: Buffer[]) => async (digest: string) => {
  const b = blobs.find((x) => sha(x) === digest);
  if (!b) throw new Error(`no blob ${digest}`);
  return (async function* () {
    for (let i = 0; i < b.length; i += 7) yield b.subarray(i, i + 7);
  })();
};

describe('inputs', () => {
  it('lays out a file and unpacks a tar into a folder, skipping links', async () => {
    const file = Buffer.from('a file\n');
    const archive = await tarOf([
      { name: 'x.txt', body: 'x\n' },
      { name: 'deep/y.txt', body: 'y\n' },
      { name: 'link', type: 'symlink', linkname: '/etc/passwd' },
    ]);
    const inputs = path.join(dir, 'inputs');
    await prepareInputs(
      [
        { digest: sha(file), path: 'data/file.txt' },
        { digest: sha(archive), path: 'set/' },
      ],
      inputs,
      serve([file, archive]),
    );
    expect(await readFile(path.join(inputs, 'data/file.txt'), 'utf8')).toBe('a file\n');
    expect(await readFile(path.join(inputs, 'set/x.txt'), 'utf8')).toBe('x\n');
    expect(await readFile(path.join(inputs, 'set/deep/y.txt'), 'utf8')).toBe('y\n');
    await expect(lstat(path.join(inputs, 'set/link'))).rejects.toThrow();
    expect((await lstat(path.join(inputs, 'data/file.txt'))).mode & 0o777).toBe(0o644);
  });

  it('refuses bytes that do not match their digest, and a tar entry that would land outside', async () => {
    const good = Buffer.from('good');
    const liar = async () => (async function* () { yield Buffer.from('evil'); })();
    await expect(prepareInputs([{ digest: sha(good), path: 'f' }], path.join(dir, 'a'), liar)).rejects.toThrow(/arrived as sha256:/);
    await expect(lstat(path.join(dir, 'a', 'f'))).rejects.toThrow();
    const escaping = await tarOf([{ name: '../../outside.txt', body: 'no' }]);
    await expect(prepareInputs([{ digest: sha(escaping), path: 't/' }], path.join(dir, 'b'), serve([escaping]))).rejects.toBeInstanceOf(InputError);
    await expect(lstat(path.join(dir, 'outside.txt'))).rejects.toThrow();
  });
});

describe('outputs', () => {
  it('packs folders, files and links, leaving out files past the cap', async () => {
    const out = path.join(dir, 'outputs');
    await mkdir(path.join(out, 'model'), { recursive: true });
    await writeFile(path.join(out, 'model', 'a.bin'), 'aaaa');
    await writeFile(path.join(out, 'model', 'b.bin'), 'bbbbbbbb');
    await writeFile(path.join(out, 'result.json'), '{"ok":true}');
    await symlink('model/a.bin', path.join(out, 'latest'));
    const packed = await packOutputs(out, path.join(dir, 'o.tar'), 16);
    // a.bin (4) fits, b.bin (8) would make 12, still fits; result.json (11) would make 23: left out.
    expect(packed).toMatchObject({ files: 2, bytes: 12, skipped: 1 });
    const entries = await untar(path.join(dir, 'o.tar'));
    expect([...entries.keys()].sort()).toEqual(['latest', 'model/', 'model/a.bin', 'model/b.bin']);
    expect(entries.get('model/b.bin')).toEqual({ type: 'file', body: 'bbbbbbbb' });
    expect(entries.get('latest')!.type).toBe('symlink');
    await mkdir(path.join(dir, 'empty'));
    expect(await packOutputs(path.join(dir, 'empty'), path.join(dir, 'e.tar'), 16)).toBeNull();
  });

  it('reads result.json only when it is small valid JSON', async () => {
    expect(await readResult(dir)).toBeNull();
    await writeFile(path.join(dir, 'result.json'), '{"loss": 0.5}\n');
    expect(await readResult(dir)).toEqual({ ok: true, value: { loss: 0.5 } });
    await writeFile(path.join(dir, 'result.json'), '{"loss": ');
    expect(await readResult(dir)).toMatchObject({ ok: false, why: expect.stringMatching(/not valid JSON/) });
    await writeFile(path.join(dir, 'result.json'), JSON.stringify({ big: 'x'.repeat(70_000) }));
    expect(await readResult(dir)).toMatchObject({ ok: false, why: expect.stringMatching(/over the 65536-byte limit/) });
  });

  it('never follows a linked result.json, nor quotes one that is not JSON', async () => {
    await writeFile(path.join(dir, 'secret.json'), '{"d": "private"}');
    await symlink(path.join(dir, 'secret.json'), path.join(dir, 'result.json'));
    expect(await readResult(dir)).toEqual({ ok: false, why: 'result.json is a link, not a file' });
    await rm(path.join(dir, 'result.json'));
    await writeFile(path.join(dir, 'result.json'), 'SECRET-TEXT');
    expect(await readResult(dir)).toEqual({ ok: false, why: 'result.json is not valid JSON' });
  });

  it("repacks the engine's archive of /outputs: prefix gone, cap kept, links kept as links, result.json judged", async () => {
    const archive = await tarOf([
      { name: 'outputs/', type: 'directory' },
      { name: 'outputs/model/', type: 'directory' },
      { name: 'outputs/model/a.bin', body: 'aaaa' },
      { name: 'outputs/model/b.bin', body: 'bbbbbbbbbbbbbbbbbbbb' },
      { name: 'outputs/result.json', body: '{"loss": 1}' },
      { name: 'outputs/key', type: 'symlink', linkname: '/home/provider/.gantry-agent/key.json' },
    ]);
    const read = await repackArchive([archive], path.join(dir, 'o.tar'), 16);
    expect(read.entries).toBe(6);
    expect(read.result).toEqual({ ok: true, value: { loss: 1 } });
    expect(read.packed).toMatchObject({ files: 2, bytes: 15, skipped: 1 });
    const entries = await untar(path.join(dir, 'o.tar'));
    expect([...entries.keys()].sort()).toEqual(['key', 'model/', 'model/a.bin', 'result.json']);
    expect(entries.get('key')!.type).toBe('symlink');

    const linked = await tarOf([
      { name: 'outputs/', type: 'directory' },
      { name: 'outputs/result.json', type: 'symlink', linkname: '/home/provider/.gantry-agent/key.json' },
    ]);
    expect((await repackArchive([linked], path.join(dir, 'l.tar'), 16)).result).toEqual({ ok: false, why: 'result.json is a link, not a file' });
    const notJson = await tarOf([{ name: 'outputs/', type: 'directory' }, { name: 'outputs/result.json', body: 'PRIVATE not json' }]);
    expect((await repackArchive([notJson], path.join(dir, 'n.tar'), 1024)).result).toEqual({ ok: false, why: 'result.json is not valid JSON' });
  });
});
