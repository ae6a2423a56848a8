import { setTimeout as sleep } from 'node:timers/promises';

// The one retry/backoff rule of the agent and the CLI (after Nomad's helper/backoff.go): the wait
// doubles from a first wait up to a cap, and each wait is jittered so that many agents that lost
// the coordinator together do not all come back at the same instant.

export interface BackoffPolicy {
  /** The wait after the first failure (its ceiling, before jitter). */
  initialMs: number;
  /** No wait is longer than this. */
  maxMs: number;
  /** How much the ceiling grows per failure in a row (default 2). */
  factor?: number;
  /** The source of jitter, in [0, 1) (default Math.random): tests pass their own. */
  random?: () => number;
}

/**
 * The wait after `failures` failures in a row (1 = the first): initialMs × factor^(failures − 1),
 * capped at maxMs, then a random point in its upper half ("equal jitter": it spreads clients out
 * and still backs off, and the cap stays a cap).
 */
export function backoffDelay(failures: number, p: BackoffPolicy): number {
  const factor = p.factor ?? 2;
  // The exponent is bounded so that a long outage cannot overflow to Infinity × 0.
  const exponent = Math.min(Math.max(0, failures - 1), 64);
  const ceiling = Math.min(p.maxMs, p.initialMs * factor ** exponent);
  return Math.round(ceiling * (0.5 + 0.5 * (p.random ?? Math.random)()));
}

/** Failures in a row under one policy: `next()` after a failure gives the wait, `reset()` after a success. */
export class Backoff {
  private count = 0;
  constructor(private readonly policy: BackoffPolicy) {}

  get failures(): number {
    return this.count;
  }

  next(): number {
    return backoffDelay(++this.count, this.policy);
  }

  reset(): void {
    this.count = 0;
  }
}

export interface RetryOptions extends BackoffPolicy {
  /** How many calls in all before the last error is thrown (default: no limit). */
  tries?: number;
  /** Whether an error may pass if tried again (default: every error); one that may not is thrown at once. */
  retryable?: (err: unknown) => boolean;
  /** Stops waiting: the retry then rejects with the signal's reason. */
  signal?: AbortSignal;
  /** Told of each failure that will be tried again, with the wait before the next try. */
  onRetry?: (err: unknown, failures: number, delayMs: number) => void;
}

/** Calls `fn` until it resolves, waiting by the policy between tries. */
export async function retry<T>(fn: (failures: number) => Promise<T>, o: RetryOptions): Promise<T> {
  const tries = o.tries ?? Infinity;
  for (let failures = 0; ; ) {
    o.signal?.throwIfAborted();
    try {
      return await fn(failures);
    } catch (err) {
      failures++;
      if (failures >= tries || (o.retryable && !o.retryable(err)) || o.signal?.aborted) throw err;
      const delayMs = backoffDelay(failures, o);
      o.onRetry?.(err, failures, delayMs);
      await sleep(delayMs, undefined, o.signal ? { signal: o.signal } : undefined).catch(() => o.signal?.throwIfAborted());
    }
  }
}
