import { resolve } from 'node:path';
import { Readable } from 'node:stream';
import { LogPage } from '../../shared/logs.ts';
import { expectOk, getJob, idArg, naming } from '../api.ts';
import { type Command, flagValue, str } from '../command.ts';
import { CliError } from '../errors.ts';
import { describeEnd, followJob, writeBatch } from '../follow.ts';
import { printable } from '../output.ts';
import { ExtractLimitError, extractTar } from '../tar.ts';
import { formatSizeMb, parseSizeMb, parseWholeNumber } from '../units.ts';

export const logs: Command = {
  name: 'logs',
  summary: "Print a job's logs: its stdout on stdout, its stderr on stderr.",
  usage: ['logs ID [-f] [--raw]'],
  description: 'The log is shown with its colours, tabs and carriage returns; other escape sequences are left out unless --raw.',
  flags: {
    follow: { type: 'boolean', short: 'f', help: 'keep streaming until the job ends (waits for it to start first)' },
    raw: { type: 'boolean', help: 'write the log as the node sent it, escape sequences and all' },
  },
  positionals: { min: 1, max: 1 },
  async run(ctx, { values, positionals }) {
    const id = idArg('job', positionals[0], 'logs');
    const { api } = await ctx.connect();
    if (values.follow) {
      const ended = await followJob(ctx, api, id, { logs: true, raw: Boolean(values.raw) });
      ctx.stderr.write(ctx.err.paint('dim', `${describeEnd(ended)}\n`));
      return;
    }
    // One page after another: a finished job's whole log, or what a running one printed so far.
    let cursor: string | null = null;
    for (;;) {
      const q: string = cursor ? `?cursor=${encodeURIComponent(cursor)}` : '';
      const page: LogPage = await naming('job', id, api.get(`/v1/jobs/${id}/logs${q}`, LogPage));
      for (const batch of page.items) writeBatch(ctx, batch, Boolean(values.raw));
      if (page.nextCursor === null || !page.items.length) break;
      cursor = page.nextCursor;
    }
  },
};

/** What `gantry outputs` unpacks at most unless told otherwise: a gzipped archive can grow a thousandfold. */
const defaultMaxSizeMb = 20 * 1024;
const defaultMaxFiles = 100_000;

export const outputs: Command = {
  name: 'outputs',
  summary: 'Download what a job wrote to /outputs and unpack it into a folder.',
  usage: ['outputs ID [-o DIR] [--max-size SIZE] [--max-files N]', 'outputs ID -o - > outputs.tar'],
  description:
    'Entries that would land outside DIR (absolute paths, "..", links) are left out and listed.\n' +
    'Unpacking stops with an error past --max-size bytes or --max-files entries.\n' +
    'With -o - the archive is written to stdout as it came.',
  flags: {
    output: { type: 'string', short: 'o', arg: 'DIR', help: 'where to unpack (default ./ID)' },
    'max-size': { type: 'string', arg: 'SIZE', help: `unpack at most this much, e.g. 500M, 20G (default ${formatSizeMb(defaultMaxSizeMb)})` },
    'max-files': { type: 'string', arg: 'N', help: `unpack at most this many entries (default ${defaultMaxFiles})` },
  },
  positionals: { min: 1, max: 1 },
  async run(ctx, { values, positionals }) {
    const id = idArg('job', positionals[0], 'outputs');
    const dir = str(values, 'output') ?? id;
    const maxSizeMb = flagValue('outputs', 'max-size', str(values, 'max-size'), parseSizeMb) ?? defaultMaxSizeMb;
    const maxEntries = flagValue('outputs', 'max-files', str(values, 'max-files'), (t) => parseWholeNumber(t, 1, 100_000_000)) ?? defaultMaxFiles;
    const { api } = await ctx.connect();
    const res = await expectOk(await api.raw('GET', `/v1/jobs/${id}/outputs`, { timeoutMs: 3600_000, headers: { accept: 'application/x-tar, */*' } }));
    if (!res.body) throw new CliError(`${id} has no outputs`);
    if (dir === '-') {
      for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
        if (!ctx.stdout.write(chunk)) await new Promise((r) => ctx.stdout.once('drain', r));
      }
      return;
    }
    const target = resolve(dir);
    let made: { files: number; bytes: number; skipped: string[] };
    try {
      made = await extractTar(Readable.fromWeb(res.body as never), target, { maxBytes: maxSizeMb * 1024 * 1024, maxEntries });
    } catch (err) {
      if (err instanceof ExtractLimitError) {
        const limit = err.limit === 'bytes' ? `more than ${formatSizeMb(maxSizeMb)} (--max-size)` : `more than ${maxEntries} entries (--max-files)`;
        throw new CliError(`the outputs of ${id} hold ${limit}: stopped after ${err.so.files} file${err.so.files === 1 ? '' : 's'} (${err.so.bytes} bytes) in ${target}`);
      }
      throw new CliError(`the outputs of ${id} are not a readable archive (${(err as Error).message})`);
    }
    for (const s of made.skipped) ctx.stderr.write(`warning: left out ${printable(s)}\n`);
    ctx.stdout.write(`${made.files} file${made.files === 1 ? '' : 's'} (${made.bytes} bytes) in ${target}\n`);
    if (made.files === 0 && !made.skipped.length) {
      const j = await getJob(api, id);
      if (j.status !== 'succeeded' && j.status !== 'failed') ctx.stderr.write(`note: ${id} is ${j.status}; outputs arrive when it ends\n`);
    }
  },
};
