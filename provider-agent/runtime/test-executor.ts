import { appendFileSync } from 'node:fs';
import type { LeaseGrant } from '../../shared/leases.ts';
import { stopReason, type ExecutionContext, type ExecutionResult, type Executor } from './executor.ts';

/**
 * THE TEST EXECUTOR. It runs nothing: the job's env says how the "run" ends, so the lease
 * runner's paths (success, a failure with a code, a job that hangs until cancelled or timed out,
 * an OOM, a runtime error) can be tested without a container engine. Only `gantry-agent run
 * --test-executor` selects it; it must never serve real work.
 *
 *   GANTRY_TEST_OUTCOME  succeed (default) | fail | hang | oom | error
 *   GANTRY_TEST_EXIT     the exit code of `fail` (default 1)
 *   GANTRY_TEST_SLEEP_MS how long the run lasts before it ends (default 0)
 *   GANTRY_TEST_START_MS how long the job takes to start, before `running` (default 0: an image
 *                        pull, a slow container start)
 *   GANTRY_TEST_RECORD   a file to append one JSON line to at each start and end (for tests
 *                        that check a job never ran on two nodes at once)
 */
export class TestExecutor implements Executor {
  readonly name = 'test';

  constructor(private opts: { nodeId?: string } = {}) {}

  async run(grant: LeaseGrant, ctx: ExecutionContext): Promise<ExecutionResult> {
    const env = grant.spec.env ?? {};
    const outcome = env.GANTRY_TEST_OUTCOME ?? 'succeed';
    const sleepMs = Math.max(0, Number(env.GANTRY_TEST_SLEEP_MS ?? 0) || 0);
    const startMs = Math.max(0, Number(env.GANTRY_TEST_START_MS ?? 0) || 0);
    const record = (event: 'start' | 'end', extra: Record<string, unknown> = {}) => {
      if (!env.GANTRY_TEST_RECORD) return;
      const line = { event, jobId: grant.jobId, epoch: grant.epoch, nodeId: this.opts.nodeId ?? null, gpus: grant.gpus.map((g) => g.id), task: grant.task ?? null, at: Date.now(), ...extra };
      appendFileSync(env.GANTRY_TEST_RECORD, `${JSON.stringify(line)}\n`);
    };
    if (outcome === 'error') return { exitCode: null, reason: 'error', error: 'the test executor was told to fail to start (GANTRY_TEST_OUTCOME=error)' };
    if (startMs > 0) await wait(startMs, ctx.signal);
    if (ctx.signal.aborted) return { exitCode: null, reason: 'cancelled', error: 'stopped before it started' };
    const started = Date.now();
    record('start');
    ctx.onRunning();
    await ctx.onLog('stdout', `test executor: ${grant.spec.command.join(' ')}\n`);
    const timeoutMs = grant.spec.timeoutSeconds * 1000;
    const ends = outcome === 'hang' ? timeoutMs : Math.min(sleepMs, timeoutMs);
    const how = await wait(ends, ctx.signal);
    const usage = { wallSeconds: (Date.now() - started) / 1000 };
    if (how === 'aborted') {
      record('end', { reason: stopReason(ctx.signal) });
      return { exitCode: 137, reason: 'cancelled', error: `stopped (${stopReason(ctx.signal)})`, usage };
    }
    record('end', { reason: outcome });
    if (outcome === 'hang' || sleepMs > timeoutMs) return { exitCode: 137, reason: 'timeout', error: `ran past its timeout of ${grant.spec.timeoutSeconds} s`, usage };
    if (outcome === 'oom') return { exitCode: 137, reason: 'oom', error: 'killed: out of memory (test executor)', usage };
    if (outcome === 'fail') {
      const code = Number(env.GANTRY_TEST_EXIT ?? 1);
      const exitCode = Number.isInteger(code) && code !== 0 ? code : 1;
      await ctx.onLog('stderr', `test executor: exiting ${exitCode}\n`);
      return { exitCode, reason: 'nonzero-exit', error: `exited ${exitCode}`, usage };
    }
    return { exitCode: 0, reason: 'succeeded', usage };
  }
}

/** Resolves after `ms`, or at once when the run is stopped. */
function wait(ms: number, signal: AbortSignal): Promise<'done' | 'aborted'> {
  return new Promise((resolve) => {
    if (signal.aborted) return resolve('aborted');
    const timer = setTimeout(() => resolve('done'), ms);
    signal.addEventListener('abort', () => {
      clearTimeout(timer);
      resolve('aborted');
    }, { once: true });
  });
}
