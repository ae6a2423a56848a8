import { openAsBlob } from 'node:fs';
import { mkdtemp, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, join, resolve } from 'node:path';
import type { ApiClient } from '../../shared/client.ts';
import { Job, type JobSpec, maxTaskCount } from '../../shared/jobs.ts';
import { expectOk } from '../api.ts';
import { type Command, type Context, flagValue, list, type Parsed, str } from '../command.ts';
import { CliError, UsageError } from '../errors.ts';
import { describeEnd, followJob, jobExitCode } from '../follow.ts';
import { formatPath, type JobSource, readJobFile, validateJobSpec } from '../job-file.ts';
import { showDryRun } from './offers.ts';
import { waitForService } from './services.ts';
import { fileDigest, packDirectory } from '../tar.ts';
import { parseDecimal, parseDurationSeconds, parsePair, parseSizeMb, parseWholeNumber } from '../units.ts';

// Flags that set a field of the spec, and where: a flag given with a job file overrides the file.
type Setter = { flag: string; path: (string | number)[]; parse: (t: string) => unknown };
const setters: Setter[] = [
  { flag: 'name', path: ['name'], parse: (t) => t },
  { flag: 'image', path: ['image'], parse: (t) => t },
  { flag: 'cpu', path: ['resources', 'cpu'], parse: parseDecimal },
  { flag: 'memory', path: ['resources', 'memoryMb'], parse: parseSizeMb },
  { flag: 'gpus', path: ['resources', 'gpus'], parse: (t) => parseWholeNumber(t, 0, 64) },
  { flag: 'gpu-model', path: ['resources', 'gpu', 'model'], parse: (t) => t },
  { flag: 'gpu-memory', path: ['resources', 'gpu', 'minMemoryMb'], parse: parseSizeMb },
  { flag: 'shm', path: ['resources', 'shmMb'], parse: parseSizeMb },
  { flag: 'disk', path: ['resources', 'diskMb'], parse: parseSizeMb },
  { flag: 'max-price', path: ['maxPricePerHour'], parse: parseDecimal },
  { flag: 'timeout', path: ['timeoutSeconds'], parse: parseDurationSeconds },
  { flag: 'retries', path: ['maxAttempts'], parse: (t) => parseWholeNumber(t, 0, 19) + 1 },
  { flag: 'priority', path: ['priority'], parse: (t) => (/^-\d+$/.test(t) ? -parseWholeNumber(t.slice(1), 0, 1000) : parseWholeNumber(t, 0, 1000)) },
  { flag: 'network', path: ['network'], parse: (t) => t },
  { flag: 'region', path: ['constraints', 'region'], parse: (t) => t },
  { flag: 'tasks', path: ['tasks', 'count'], parse: (t) => parseWholeNumber(t, 1, maxTaskCount) },
  { flag: 'max-parallel', path: ['tasks', 'maxParallel'], parse: (t) => parseWholeNumber(t, 1, maxTaskCount) },
];

function setIn(obj: Record<string, unknown>, path: (string | number)[], value: unknown) {
  let o = obj;
  for (const p of path.slice(0, -1)) {
    const next = o[p];
    if (!next || typeof next !== 'object' || Array.isArray(next)) o[p] = {};
    o = o[p] as Record<string, unknown>;
  }
  o[path[path.length - 1]!] = value;
}

function pairs(flag: string, values: string[]): Record<string, string> {
  const out: Record<string, string> = {};
  for (const v of values) {
    const [k, val] = flagValue('submit', flag, v, parsePair)!;
    out[k] = val;
  }
  return out;
}

/** "registry:5000/team/trainer:v2@sha256:..." → "trainer": the default job name. */
export function nameOfImage(image: string): string {
  const last = image.split('@')[0]!.split('/').pop() ?? '';
  return last.split(':')[0] || 'job';
}

/** The spec from a job file and/or flags, and which paths the flags set (their problems name the flag). */
export async function buildSpec(args: Parsed): Promise<{ data: Record<string, unknown>; source: JobSource | null; fromFlags: Map<string, string> }> {
  const file = args.positionals[0];
  const source = file ? await readJobFile(file) : null;
  const data: Record<string, unknown> = source ? structuredClone(source.data) : {};
  const fromFlags = new Map<string, string>();
  for (const s of setters) {
    const value = flagValue('submit', s.flag, str(args.values, s.flag), s.parse);
    if (value === undefined) continue;
    setIn(data, s.path, value);
    fromFlags.set(formatPath(s.path), `--${s.flag}`);
  }
  const merge = (flag: string, path: string[]) => {
    const given = list(args.values, flag);
    if (!given.length) return;
    const current = path.reduce<unknown>((o, p) => (o && typeof o === 'object' ? (o as Record<string, unknown>)[p] : undefined), data);
    setIn(data, path, { ...(current && typeof current === 'object' ? current : {}), ...pairs(flag, given) });
    fromFlags.set(formatPath(path), `--${flag}`);
  };
  merge('env', ['env']);
  merge('label', ['labels']);
  merge('node-label', ['constraints', 'nodeLabels']);
  const retryOn = list(args.values, 'retry-on');
  if (retryOn.length) {
    data.retryOn = retryOn;
    fromFlags.set('retryOn', '--retry-on');
  }
  if (args.rest.length) {
    data.command = args.rest;
    fromFlags.set('command', '-- CMD');
  }
  if (!source) {
    // Flags alone: what a person means when they leave these out.
    if (typeof data.image === 'string' && data.name === undefined) data.name = nameOfImage(data.image);
    const r = (data.resources ??= {}) as Record<string, unknown>;
    r.cpu ??= 1;
    r.memoryMb ??= 1024;
    if (data.image === undefined) throw new UsageError('give a job file or --image IMAGE -- CMD ARGS', 'submit');
    if (data.command === undefined) throw new UsageError('give the command after --, e.g. gantry submit --image busybox -- echo hi', 'submit');
  }
  return { data, source, fromFlags };
}

/** Problems on paths a flag set name the flag, not a line of the file. */
function flagAwareSource(source: JobSource | null, fromFlags: Map<string, string>): JobSource | undefined {
  if (!source && !fromFlags.size) return undefined;
  const flagOf = (path: readonly PropertyKey[]) => {
    for (let i = path.length; i > 0; i--) {
      const f = fromFlags.get(formatPath(path.slice(0, i)));
      if (f) return f;
    }
    return null;
  };
  return {
    file: source?.file ?? '',
    data: source?.data ?? {},
    lineOf: (path, key) => (flagOf(key !== undefined ? [...path, key] : path) ? null : (source?.lineOf(path, key) ?? null)),
    flagOf,
  };
}

interface PlannedInput {
  local: string;
  dest: string;
  kind: 'file' | 'dir';
  upload: string;
  digest: string;
  size: number;
}

/** "--input SRC[:DEST]": a file lands at /inputs/DEST (default its name), a folder at /inputs/DEST/. */
async function planInputs(specs: string[], scratch: () => Promise<string>, ctx: Context): Promise<PlannedInput[]> {
  const out: PlannedInput[] = [];
  for (const text of specs) {
    const colon = text.lastIndexOf(':');
    const [src, destGiven] = colon > 0 ? [text.slice(0, colon), text.slice(colon + 1)] : [text, undefined];
    const st = await stat(src).catch(() => null);
    if (!st) throw new UsageError(`--input: no such file or folder: ${src}`, 'submit');
    const name = basename(resolve(src));
    if (st.isDirectory()) {
      const tarFile = join(await scratch(), `input-${out.length}.tar`);
      const packed = await packDirectory(src, tarFile);
      for (const s of packed.skipped) ctx.stderr.write(`warning: --input ${src}: left out ${s} (not a regular file or folder)\n`);
      const dest = (destGiven ?? name).replace(/\/*$/, '/');
      out.push({ local: src, dest, kind: 'dir', upload: tarFile, digest: packed.digest, size: packed.size });
    } else if (st.isFile()) {
      const { digest, size } = await fileDigest(src);
      out.push({ local: src, dest: destGiven ?? name, kind: 'file', upload: src, digest, size });
    } else {
      throw new UsageError(`--input: ${src} is neither a file nor a folder`, 'submit');
    }
  }
  return out;
}

async function uploadBlob(api: ApiClient, input: PlannedInput): Promise<void> {
  const body = await openAsBlob(input.upload);
  const res = await api.raw('POST', '/v1/blobs', {
    body,
    headers: { 'content-type': input.kind === 'dir' ? 'application/x-tar' : 'application/octet-stream', accept: 'application/json' },
    timeoutMs: 3600_000,
  });
  await expectOk(res);
  const answer = (await res.json().catch(() => null)) as { digest?: string } | null;
  if (answer?.digest !== input.digest) {
    throw new CliError(`upload of ${input.local} came back as ${answer?.digest ?? 'no digest'}, not ${input.digest}: not submitted`);
  }
}

const flags: Command['flags'] = {
  name: { type: 'string', arg: 'NAME', help: 'job name (default: the image name)' },
  image: { type: 'string', arg: 'IMAGE', help: 'container image, e.g. pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime' },
  gpus: { type: 'string', arg: 'N', help: 'number of GPUs (default 0)' },
  'gpu-model': { type: 'string', arg: 'MODEL', help: 'GPU model, matched by words: H100, "RTX 4090", A10' },
  'gpu-memory': { type: 'string', arg: 'SIZE', help: 'at least this much memory on each GPU, e.g. 80G' },
  cpu: { type: 'string', arg: 'CORES', help: 'CPU cores, e.g. 8 or 0.5 (default 1)' },
  memory: { type: 'string', arg: 'SIZE', help: 'memory in binary units: 512M, 64G (= 65536 MiB), 1.5T (default 1G)' },
  shm: { type: 'string', arg: 'SIZE', help: 'shared memory size (/dev/shm)' },
  disk: { type: 'string', arg: 'SIZE', help: 'the most the job may write to /outputs and its other writable paths (default 10G)' },
  'max-price': { type: 'string', arg: 'PRICE', help: 'the most the job may cost per hour, e.g. 4.5' },
  env: { type: 'string', arg: 'K=V', multiple: true, help: 'environment variable' },
  label: { type: 'string', arg: 'K=V', multiple: true, help: 'label on the job' },
  'node-label': { type: 'string', arg: 'K=V', multiple: true, help: 'run only on nodes with this label' },
  region: { type: 'string', arg: 'REGION', help: 'run only in this region' },
  timeout: { type: 'string', arg: 'DURATION', help: 'stop the job after this long: 90s, 30m, 2h, 1h30m (default 1h)' },
  retries: { type: 'string', arg: 'N', help: 'place the job again up to N times if its node is lost (default 2)' },
  'retry-on': { type: 'string', arg: 'REASON', multiple: true, help: 'also retry when the job fails with nonzero-exit, oom, disk or timeout' },
  priority: { type: 'string', arg: 'N', help: 'higher runs first, -1000 to 1000 (default 0)' },
  network: { type: 'string', arg: 'MODE', help: 'bridge (default) or none' },
  input: { type: 'string', arg: 'SRC[:DEST]', multiple: true, help: 'upload a file or folder first; the job sees it under /inputs/DEST' },
  tasks: { type: 'string', arg: 'N', help: 'a job array of N tasks (1 to 10000), each with GANTRY_TASK_INDEX (0 to N-1) and GANTRY_TASK_COUNT' },
  'max-parallel': { type: 'string', arg: 'M', help: 'run at most M tasks of the array at once (default all)' },
  'idempotency-key': { type: 'string', arg: 'KEY', help: 'submitting again with the same key returns the same job' },
  detach: { type: 'boolean', short: 'd', help: 'a service job: print its id and return, without waiting for its URL' },
  follow: { type: 'boolean', short: 'f', help: "wait for the job, stream its logs, and exit with the job's exit code" },
  'dry-run': { type: 'boolean', help: 'show which offers the job would take and what it would cost; submit nothing' },
  json: { type: 'boolean', help: 'print the submitted job (or the dry run) as JSON' },
};

export const submit: Command = {
  name: 'submit',
  summary: 'Submit a job from a job file (YAML or JSON) and/or flags; prints the job id.',
  usage: ['submit JOB_FILE [flags]', 'submit --image IMAGE [flags] -- CMD [ARGS...]'],
  description:
    'A job file is the API\'s job spec (name, image, command, resources: {cpu, memoryMb, gpus, gpu: {model}}, ...).\n' +
    'Flags given with a file override its fields. Sizes are binary: 64G = 64 GiB = 65536 MiB.\n' +
    'A service job (service: {port}) prints its id, then its URL once it is ready (--detach: only the id).\n' +
    'With --follow the exit code is the job\'s own (0 on success; 1 when it ended without one, e.g. cancelled).\n' +
    'With --dry-run the exit code is 0 when some node fits the job now and 1 when none does.',
  flags,
  positionals: { min: 0, max: 1 },
  takesRest: true,
  examples: [
    'gantry submit job.yaml --follow',
    'gantry submit --image pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime --gpus 2 --gpu-model H100 --cpu 8 --memory 64G \\\n      --max-price 4.5 --input ./data:data/ -- python train.py --epochs 3',
    'gantry submit job.yaml --dry-run',
    'gantry submit sweep.yaml --tasks 200 --max-parallel 16',
  ],
  async run(ctx, args) {
    const { data, source, fromFlags } = await buildSpec(args);
    let scratchDir: string | null = null;
    const scratch = async () => (scratchDir ??= await mkdtemp(join(tmpdir(), 'gantry-')));
    try {
      const inputs = await planInputs(list(args.values, 'input'), scratch, ctx);
      if (inputs.length) {
        data.inputs = [...((data.inputs as unknown[] | undefined) ?? []), ...inputs.map((i) => ({ digest: i.digest, path: i.dest }))];
        fromFlags.set('inputs', '--input');
      }
      const spec: JobSpec = validateJobSpec(data, flagAwareSource(source, fromFlags));
      const { api } = await ctx.connect();

      if (args.values['dry-run']) return await showDryRun(ctx, api, spec, Boolean(args.values.json));

      const progress = ctx.progress();
      for (const input of inputs) {
        progress.update(`uploading ${input.local} (${(input.size / 1048576).toFixed(1)} MiB)`);
        await uploadBlob(api, input);
      }
      progress.stop();
      const key = str(args.values, 'idempotency-key');
      const created = await api.post('/v1/jobs', spec, Job, key ? { headers: { 'idempotency-key': key } } : undefined);
      if (args.values.json) ctx.stdout.write(`${JSON.stringify(created, null, 2)}\n`);
      else ctx.stdout.write(`${created.id}\n`);
      // A service: its URL once it answers (a second line on stdout), unless told not to wait.
      if (spec.service && !args.values.follow && !args.values.json && !args.values.detach) {
        ctx.stdout.write(`${await waitForService(ctx, api, created.id)}\n`);
        return;
      }
      if (!args.values.follow) {
        if (!args.values.json) ctx.stderr.write(ctx.err.paint('dim', `follow it with: gantry logs -f ${created.id}\n`));
        return;
      }
      // An array has no logs of its own (each task has its own): its progress is followed.
      const ended = await followJob(ctx, api, created.id, { logs: !created.tasks });
      ctx.stderr.write(`${describeEnd(ended)}\n`);
      return jobExitCode(ended);
    } finally {
      if (scratchDir) await rm(scratchDir, { recursive: true, force: true });
    }
  },
};
