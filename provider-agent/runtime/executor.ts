import type { LeaseGrant, OutcomeReason, ReportedUsage } from '../../shared/leases.ts';

/**
 * THE interface a runtime implements (Docker, the test executor). The lease runner calls run()
 * once per verified lease and reports what it returns; the runtime never talks to the
 * coordinator itself.
 */
export interface Executor {
  /** A short name for logs and `gantry-agent` output: "docker", "test". */
  readonly name: string;
  run(grant: LeaseGrant, ctx: ExecutionContext): Promise<ExecutionResult>;
}

/** Why the runner aborted a run: what ctx.signal.reason holds. */
export type StopReason = 'cancelled' | 'lease-lost' | 'lease-expired' | 'shutdown';

export interface ExecutionContext {
  /**
   * Aborted when the job must stop; signal.reason is a StopReason. The runtime stops the work
   * (SIGTERM, then SIGKILL after a grace) and resolves run() with reason 'cancelled'.
   */
  signal: AbortSignal;
  /** Call once the job's process has started (the container runs): the runner reports `running`. */
  onRunning(): void;
  /** Output as it comes, in order per stream; the log shipper numbers and sends it. */
  onLog(stream: 'stdout' | 'stderr', text: string): void;
}

/** How a run ended. `succeeded` means exit code 0; the runner reports the rest as the job's failure. */
export interface ExecutionResult {
  /** The process's exit code; null when it never started or was killed before it could exit. */
  exitCode: number | null;
  reason: Exclude<OutcomeReason, 'refused'>;
  /** A one-line account of what went wrong (image pull failed, OOM killed, ...). */
  error?: string;
  usage?: ReportedUsage;
}

/** The StopReason of an aborted signal (undefined while it is not aborted). */
export function stopReason(signal: AbortSignal): StopReason | undefined {
  if (!signal.aborted) return undefined;
  const r = signal.reason;
  return r === 'cancelled' || r === 'lease-lost' || r === 'lease-expired' || r === 'shutdown' ? r : 'shutdown';
}
