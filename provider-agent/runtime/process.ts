import { spawn } from 'node:child_process';
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import type { LeaseGrant } from '../../shared/leases.ts';
import { InputError, prepareInputs } from '../inputs.ts';
import { defaultOutputsMaxBytes, readOutputsDir, saveOutputs } from '../outputs.ts';
import type { RuntimeLogger } from './docker.ts';
import { StreamDecoders, type OutputStream } from './engine-streams.ts';
import { stopReason, type ExecutionContext, type ExecutionResult, type Executor } from './executor.ts';
import { nvidiaDeviceId, taskEnv } from './docker-spec.ts';
import { removeTree } from './tree.ts';

/** What the agent says, loudly, when it starts with --unsafe-process-runtime. */
export const processRuntimeWarning =
  'WARNING: --unsafe-process-runtime: jobs run as plain processes of this user on this machine, NOT isolated: ' +
  'a job can read and change your files, see your network and other jobs, and no memory or CPU limit is enforced. ' +
  'Use it only on a machine of your own for jobs you trust; install Docker to run jobs in containers.';

export interface ProcessRuntimeOptions {
  workDir: string;
  log: RuntimeLogger;
  stopGraceSeconds?: number;
  outputsMaxBytes?: number;
}

/**
 * The unsafe opt-in for a laptop without Docker: the job's command (entrypoint + command) as a
 * child process in a folder of its own, with the same reporting as containers: output per
 * stream, exit code, timeout and cancel (SIGTERM to its process group, SIGKILL after a grace),
 * inputs and outputs (in folders named by GANTRY_INPUTS and GANTRY_OUTPUTS, as there is no
 * /inputs here). The leased GPUs are the only ones CUDA_VISIBLE_DEVICES shows.
 */
export class ProcessRuntime implements Executor {
  readonly name = 'process (unsafe)';
  private readonly grace: number;

  constructor(private readonly o: ProcessRuntimeOptions) {
    this.grace = o.stopGraceSeconds ?? 10;
  }

  async run(grant: LeaseGrant, ctx: ExecutionContext): Promise<ExecutionResult> {
    const { spec } = grant;
    const dir = join(this.o.workDir, 'jobs', `${grant.jobId}.${grant.epoch}`);
    const inputs = join(dir, 'inputs');
    const outputs = join(dir, 'outputs');
    const home = join(dir, 'home');
    try {
      await mkdir(outputs, { recursive: true });
      await mkdir(home, { recursive: true });
      await prepareInputs(spec.inputs, inputs, ctx.fetchInput);
    } catch (err) {
      await removeTree(dir).catch((err) => this.o.log.warn('job folder not removed', { jobId: grant.jobId, error: (err as Error).message }));
      return { exitCode: null, reason: 'error', error: err instanceof InputError ? err.message : `inputs could not be prepared: ${(err as Error).message}` };
    }
    if (ctx.signal.aborted) {
      await removeTree(dir).catch((err) => this.o.log.warn('job folder not removed', { jobId: grant.jobId, error: (err as Error).message }));
      return { exitCode: null, reason: 'cancelled', error: 'stopped before it started' };
    }
    const gpus = grant.gpus.map(nvidiaDeviceId).join(',');
    const argv = [...(spec.entrypoint ?? []), ...spec.command];
    const env: Record<string, string> = {
      PATH: process.env.PATH ?? '/usr/local/bin:/usr/bin:/bin',
      HOME: home,
      TMPDIR: process.env.TMPDIR ?? '/tmp',
      ...spec.env,
      CUDA_VISIBLE_DEVICES: gpus,
      NVIDIA_VISIBLE_DEVICES: gpus || 'void',
      GANTRY_JOB_ID: grant.jobId,
      ...taskEnv(grant),
      GANTRY_INPUTS: inputs,
      GANTRY_OUTPUTS: outputs,
    };
    const started = Date.now();
    const child = spawn(argv[0]!, argv.slice(1), { cwd: dir, env, stdio: ['ignore', 'pipe', 'pipe'], detached: true });
    const spawned = await new Promise<Error | null>((resolve) => {
      child.once('spawn', () => resolve(null));
      child.once('error', (err) => resolve(err));
    });
    if (spawned) {
      await removeTree(dir).catch((err) => this.o.log.warn('job folder not removed', { jobId: grant.jobId, error: (err as Error).message }));
      return { exitCode: null, reason: 'error', error: `${argv[0]} could not be started: ${spawned.message}` };
    }
    // A service listens on the node's loopback: this runtime has no network of its own.
    ctx.onRunning(spec.service ? { host: '127.0.0.1', port: spec.service.port } : undefined);

    const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
      child.once('exit', (code, signal) => resolve({ code, signal })),
    );
    let stoppedFor: 'timeout' | 'cancel' | null = null;
    let killTimer: NodeJS.Timeout | undefined;
    const signalGroup = (sig: NodeJS.Signals) => {
      try {
        process.kill(-child.pid!, sig);
      } catch {
        /* gone already */
      }
    };
    const stop = (why: 'timeout' | 'cancel') => {
      if (stoppedFor) return;
      stoppedFor = why;
      signalGroup('SIGTERM');
      killTimer = setTimeout(() => signalGroup('SIGKILL'), this.grace * 1000);
    };
    const timer = setTimeout(() => {
      ctx.onProgress?.(`past its ${spec.timeoutSeconds} s timeout: stopping it`);
      stop('timeout');
    }, spec.timeoutSeconds * 1000);
    const onAbort = () => {
      ctx.onProgress?.(`stopping it: ${String(stopReason(ctx.signal))}`);
      stop('cancel');
    };
    if (ctx.signal.aborted) onAbort();
    else ctx.signal.addEventListener('abort', onAbort, { once: true });

    const decoders = new StreamDecoders();
    const pump = (stream: OutputStream, from: Readable) =>
      (async () => {
        for await (const piece of from) {
          const text = decoders.write(stream, piece as Buffer);
          if (text) await ctx.onLog(stream, text);
        }
        const tail = decoders.end(stream);
        if (tail) await ctx.onLog(stream, tail);
      })().catch(() => {});
    const pumps = Promise.all([pump('stdout', child.stdout!), pump('stderr', child.stderr!)]);
    try {
      const { code, signal } = await exited;
      await pumps;
      const wallSeconds = (Date.now() - started) / 1000;
      const exitCode = code ?? (signal ? 128 + (signalNumbers[signal] ?? 0) : null);
      const maxBytes = this.o.outputsMaxBytes ?? defaultOutputsMaxBytes;
      await saveOutputs(ctx, readOutputsDir(outputs, join(dir, 'outputs.tar'), maxBytes), maxBytes, (m, f) =>
        this.o.log.warn(m, { jobId: grant.jobId, ...f }),
      );
      const usage = { wallSeconds };
      if (stoppedFor === 'timeout') return { exitCode, reason: 'timeout', error: `stopped after its ${spec.timeoutSeconds} s timeout`, usage };
      if (stoppedFor === 'cancel') return { exitCode, reason: 'cancelled', error: 'stopped: cancelled', usage };
      if (exitCode === 0) return { exitCode, reason: 'succeeded', usage };
      return { exitCode, reason: 'nonzero-exit', error: signal ? `killed by ${signal}` : `exited with code ${exitCode}`, usage };
    } finally {
      clearTimeout(timer);
      clearTimeout(killTimer);
      ctx.signal.removeEventListener('abort', onAbort);
      // Whatever the job left running in its group goes with it.
      signalGroup('SIGKILL');
      await removeTree(dir).catch((err) => this.o.log.warn('job folder not removed', { jobId: grant.jobId, error: (err as Error).message }));
    }
  }
}

const signalNumbers: Partial<Record<NodeJS.Signals, number>> = { SIGHUP: 1, SIGINT: 2, SIGKILL: 9, SIGSEGV: 11, SIGTERM: 15, SIGABRT: 6 };
