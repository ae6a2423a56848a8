import type { KeyVerifier } from './auth/api-keys.ts';
import type { BlobStore } from './blobs/store.ts';
import type { Clock } from './clock.ts';
import type { Config } from './config.ts';
import type { DatabaseAvailability } from './db/availability.ts';
import type { Database } from './db/open.ts';
import type { Logger } from './log.ts';
import type { Metrics } from './metrics/registry.ts';
import type { PoolStats } from './pool/stats.ts';
import type { AgentVerifier } from './nodes/agent-auth.ts';
import type { Signals } from './signals.ts';
import type { LeaseService } from './leases/service.ts';
import type { LogFollowers } from './logs/followers.ts';
import type { SchedulerLoop } from './scheduler/loop.ts';
import type { ServiceSide } from './services/side.ts';

/** What the lease side adds to a heartbeat answer (renewed tokens, cancellations). */
export interface HeartbeatExtras {
  [key: string]: unknown;
}

/**
 * The scheduler/lease side's part in a heartbeat, called by the nodes side after it stored the
 * heartbeat: in the same transaction when the node reports jobs (or hardware); for a node that
 * holds none, after the heartbeat's single statement, with the database itself (nothing to
 * renew, and BEGIN/COMMIT would triple an idle heartbeat's cost). The default does nothing.
 */
export interface HeartbeatHook {
  onHeartbeat(
    tx: import('./db/open.ts').DbOrTx,
    nodeId: string,
    // draining: the node row's flag as the heartbeat just read it (the hook need not read it again).
    report: { jobs: { jobId: string; epoch: number }[]; draining?: boolean },
    at: Date,
  ): Promise<HeartbeatExtras>;
}

/** Everything the app is built from; production and tests pass the same shape to createApp. */
export interface AppDeps {
  config: Config;
  database: Database;
  /** Whether the database answers, and since when (readiness, the sweepers' grace). */
  availability: DatabaseAvailability;
  clock: Clock;
  log: Logger;
  signals: Signals;
  keys: KeyVerifier;
  /** Verifies agents' own signed tokens (requireAgent). */
  agents: AgentVerifier;
  /** Bytes of job inputs and outputs, by digest (coordinator/blobs/). */
  blobs: BlobStore;
  heartbeatHook: HeartbeatHook;
  /** Lease tokens, JWKS, the work long-poll's leases and wake-ups. */
  leases: LeaseService;
  /** The scheduler loop (tests and the benchmark run passes through it). */
  scheduler: SchedulerLoop;
  /** The pool's figures, cached for a crowd of readers (GET /v1/pool, /metrics, the dashboard). */
  pool: PoolStats;
  metrics: Metrics;
  /** Every open log stream of this coordinator: one read per followed job, caps, max life. */
  logFollowers: LogFollowers;
  /** Service jobs: their URLs, tokens, the agents' tunnels and the front door. */
  services: ServiceSide;
}
