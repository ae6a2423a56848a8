import type { LeaseGrant, LeaseRef, OutcomeReason, ReportedUsage } from '../../shared/leases.ts';
import type { ServiceAddress } from '../tunnel/tunnel.ts';

/**
 * THE interface a runtime implements (Docker, the test executor). The lease runner calls run()
 * once per verified lease and reports what it returns; the runtime never talks to the
 * coordinator itself.
 */
export interface Executor {
  /** A short name for logs and `gantry-agent` output: "docker", "test". */
  readonly name: string;
  run(grant: LeaseGrant, ctx: ExecutionContext): Promise<ExecutionResult>;
  /**
   * Runs this node left behind when the agent last stopped (Docker: containers found by their
   * labels), so the runner can resume each one whose lease is still current, by calling run()
   * with its grant (the runtime then follows the existing container instead of starting one),
   * and discard() the rest. Optional: a runtime without it leaves nothing behind.
   */
  recover?(): Promise<RecoveredRun[]>;
  /** Stops and removes what is left of a run whose lease is gone (found by recover()). */
  discard?(run: RecoveredRun): Promise<void>;
  /**
   * The local time (ms) a run's lease ends at, as last renewed: called at the start and at every
   * renewal. A runtime that can stop the job at that time without the agent (Docker: a watchdog
   * process, runtime/watchdog.ts) keeps it where that stop can read it.
   */
  leaseDeadline?(lease: LeaseRef, deadlineMs: number): void;
}

/** A run found after an agent restart: the job, the epoch it ran under, and the grant it was started with. */
export interface RecoveredRun {
  jobId: string;
  epoch: number;
  /** The grant as the runtime kept it (null when it could not be read back: discard the run). */
  grant: LeaseGrant | null;
  /** Whether the job's process is still running (false: it ended while the agent was away). */
  running: boolean;
  /** Stopped at its lease's end while no agent ran (its watchdog did): its end is not the job's own, it is never resumed. */
  stoppedAtLeaseEnd?: boolean;
}

/** Why the runner aborted a run: what ctx.signal.reason holds. */
export type StopReason = 'cancelled' | 'lease-lost' | 'lease-expired' | 'shutdown';

export interface ExecutionContext {
  /**
   * Aborted when the job must stop; signal.reason is a StopReason. The runtime stops the work
   * (SIGTERM, then SIGKILL after a grace) and resolves run() with reason 'cancelled'.
   */
  signal: AbortSignal;
  /**
   * Call once the job's process has started (the container runs): the runner reports `running`.
   * A service job (spec.service) passes where its port is reached inside the node.
   */
  onRunning(service?: ServiceAddress): void;
  /**
   * Call once the job's process has ended, before its outputs are saved: from then on the end of
   * the lease no longer stops the run (nothing runs any more), so a slow upload during an outage
   * does not cost the result. Without the call, run()'s return counts as the end.
   */
  onExited?(): void;
  /**
   * Output as it comes, in order per stream; the log shipper numbers and sends it. When it
   * returns a promise the runtime waits for it before reading more output (the shipper's
   * backpressure, which keeps the agent's memory bounded).
   */
  onLog(stream: 'stdout' | 'stderr', text: string): void | Promise<void>;
  /**
   * Call once the job's output is all handed to onLog (its process ended, its log read to the
   * end): the runner ships what is left while the runtime saves the outputs. Without the call,
   * run()'s return counts as the end of the output.
   */
  onOutputEnd?(): void;
  /** A note about the run for the job's events and its log (image pull progress, restarts). */
  onProgress?(message: string): void;
  /** The bytes of one of the job's inputs (spec.inputs), fetched with the lease. Needed when the spec has inputs. */
  fetchInput?(digest: string): Promise<AsyncIterable<Uint8Array>>;
  /** Uploads the tar of what the job wrote to /outputs, with the lease, before the run's end is reported. */
  uploadOutputs?(tar: Blob): Promise<void>;
  /** Stores /outputs/result.json's value on the job, with the lease. */
  uploadResult?(result: unknown): Promise<void>;
}

/** How a run ended. `succeeded` means exit code 0; the runner reports the rest as the job's failure. */
export interface ExecutionResult {
  /** The process's exit code; null when it never started or was killed before it could exit. */
  exitCode: number | null;
  reason: Exclude<OutcomeReason, 'refused'>;
  /** A one-line account of what went wrong (image pull failed, OOM killed, ...). */
  error?: string;
  usage?: ReportedUsage;
  /**
   * What is left to remove (engine volumes: seconds for many files), which the runner starts
   * once the end is reported, or once it knows there is nothing to report. It never throws.
   */
  cleanup?: () => Promise<void>;
}

/** The StopReason of an aborted signal (undefined while it is not aborted). */
export function stopReason(signal: AbortSignal): StopReason | undefined {
  if (!signal.aborted) return undefined;
  const r = signal.reason;
  return r === 'cancelled' || r === 'lease-lost' || r === 'lease-expired' || r === 'shutdown' ? r : 'shutdown';
}
