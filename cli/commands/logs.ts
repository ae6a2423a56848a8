import { resolve } from 'node:path';
import { Readable } from 'node:stream';
import type { LogPage } from '../../shared/logs.ts';
import { expectOk, getJob, idArg, naming } from '../api.ts';
import { type Command, str } from '../command.ts';
import { CliError } from '../errors.ts';
import { describeEnd, followJob, writeBatch } from '../follow.ts';
import { extractTar } from '../tar.ts';

export const logs: Command = {
  name: 'logs',
  summary: "Print a job's logs: its stdout on stdout, its stderr on stderr.",
  usage: ['logs ID [-f]'],
  flags: {
    follow: { type: 'boolean', short: 'f', help: 'keep streaming until the job ends (waits for it to start first)' },
  },
  positionals: { min: 1, max: 1 },
  async run(ctx, { values, positionals }) {
    const id = idArg('job', positionals[0], 'logs');
    const { api } = await ctx.connect();
    if (values.follow) {
      const ended = await followJob(ctx, api, id, { logs: true });
      ctx.stderr.write(ctx.err.paint('dim', `${describeEnd(ended)}\n`));
      return;
    }
    // One page after another: a finished job's whole log, or what a running one printed so far.
    let cursor: string | null = null;
    for (;;) {
      const q: string = cursor ? `?cursor=${encodeURIComponent(cursor)}` : '';
      const page: LogPage = await naming('job', id, api.get<LogPage>(`/v1/jobs/${id}/logs${q}`));
      for (const batch of page.items) writeBatch(ctx, batch);
      if (page.nextCursor === null || !page.items.length) break;
      cursor = page.nextCursor;
    }
  },
};

export const outputs: Command = {
  name: 'outputs',
  summary: 'Download what a job wrote to /outputs and unpack it into a folder.',
  usage: ['outputs ID [-o DIR]', 'outputs ID -o - > outputs.tar'],
  description:
    'Entries that would land outside DIR (absolute paths, "..", links) are left out and listed.\n' +
    'With -o - the archive is written to stdout as it came.',
  flags: {
    output: { type: 'string', short: 'o', arg: 'DIR', help: 'where to unpack (default ./ID)' },
  },
  positionals: { min: 1, max: 1 },
  async run(ctx, { values, positionals }) {
    const id = idArg('job', positionals[0], 'outputs');
    const dir = str(values, 'output') ?? id;
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
      made = await extractTar(Readable.fromWeb(res.body as never), target);
    } catch (err) {
      throw new CliError(`the outputs of ${id} are not a readable archive (${(err as Error).message})`);
    }
    for (const s of made.skipped) ctx.stderr.write(`warning: left out ${s}\n`);
    ctx.stdout.write(`${made.files} file${made.files === 1 ? '' : 's'} (${made.bytes} bytes) in ${target}\n`);
    if (made.files === 0 && !made.skipped.length) {
      const j = await getJob(api, id);
      if (j.status !== 'succeeded' && j.status !== 'failed') ctx.stderr.write(`note: ${id} is ${j.status}; outputs arrive when it ends\n`);
    }
  },
};
