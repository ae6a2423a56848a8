import { z } from 'zod';
import { BlobDigest, JobSpec, maxTaskCount } from './jobs.ts';
import { idPattern } from './ids.ts';
import { cleanNodeMessage } from './text.ts';

// Wire shapes of leases: the token's claims, what GET /v1/agent/work hands a node, what the
// agent reports back, and what the lease side adds to a heartbeat answer.

const JobId = z.string().regex(idPattern('job'), 'not a job id');
const Epoch = z.number().int().min(0).max(2_147_483_647);

/** A job a node holds, at the lease epoch it holds it with. */
export const LeaseRef = z.object({ jobId: JobId, epoch: Epoch }).strict();
export type LeaseRef = z.infer<typeof LeaseRef>;

export const TaskClaim = z.object({ index: z.number().int().min(0).max(maxTaskCount - 1), count: z.number().int().min(1).max(maxTaskCount) }).strict();
export type TaskClaim = z.infer<typeof TaskClaim>;

/** The claims of a lease token (DESIGN.md "Lease token"). */
export const LeaseClaims = z.object({
  iss: z.string(),
  /** The node the lease is for. */
  aud: z.string(),
  /** The job. */
  sub: z.string(),
  /** The lease id. */
  jti: z.string(),
  iat: z.number().int(),
  exp: z.number().int(),
  /** The fencing token: the job's lease epoch when the token was signed. */
  epoch: Epoch,
  /** The GPUs granted, by the ids the agent advertised (UUIDs or MIG device ids). */
  gpus: z.array(z.string()),
  /** CPU (millicores) and memory granted. */
  res: z.object({ cpuMillis: z.number().int(), memoryMb: z.number().int() }),
  /** specDigest() of the job spec. */
  spec: BlobDigest,
  /** For a task of a job array: its index (0-based) and the array's count, set in its env as GANTRY_TASK_INDEX and GANTRY_TASK_COUNT. */
  task: TaskClaim.optional(),
});
export type LeaseClaims = z.infer<typeof LeaseClaims>;

/** A GPU named by a lease, as the node advertised it. */
export const LeaseGpu = z.object({
  id: z.string(),
  index: z.number().int(),
  uuid: z.string(),
  model: z.string(),
  mig: z.object({ gpuInstanceId: z.number().int(), computeInstanceId: z.number().int() }).nullable(),
});
export type LeaseGpu = z.infer<typeof LeaseGpu>;

/** One lease handed to a node: the signed token, and the job spec it was signed for. */
export const LeaseGrant = z.object({
  jobId: z.string(),
  leaseId: z.string(),
  epoch: Epoch,
  /** The signed lease (JWS compact). Nothing runs until the agent has verified it. */
  token: z.string(),
  spec: JobSpec,
  /** Set by the agent from the verified token's claim (never taken from the coordinator's answer). */
  task: TaskClaim.optional(),
  gpus: z.array(LeaseGpu),
  cpuMillis: z.number().int(),
  memoryMb: z.number().int(),
  /** The lease's expiry in the database when it was handed out (coordinator's clock). */
  expiresAt: z.string(),
  /** The same expiry as a duration from the moment the coordinator answered. */
  expiresInMs: z.number().int(),
});
export type LeaseGrant = z.infer<typeof LeaseGrant>;

/** GET /v1/agent/work?wait=30&have=job_a.3,job_b.1 */
export const WorkQuery = z.object({
  wait: z.coerce.number().int().min(0).max(60).default(30),
  /** The leases the agent already holds (jobId.epoch, comma-separated): not handed out again. */
  have: z.string().max(16_384).optional(),
});
export const Work = z.object({ leases: z.array(LeaseGrant) });
export type Work = z.infer<typeof Work>;

/** How a run ended, as the agent saw it. */
export const outcomeReasons = ['succeeded', 'nonzero-exit', 'oom', 'disk', 'timeout', 'cancelled', 'error', 'refused'] as const;
export const OutcomeReason = z.enum(outcomeReasons);
export type OutcomeReason = z.infer<typeof OutcomeReason>;

/** What the agent measured of a run; the coordinator meters billing itself from the lease. */
export const ReportedUsage = z
  .object({
    wallSeconds: z.number().min(0).max(1e9).optional(),
    cpuSeconds: z.number().min(0).max(1e12).optional(),
    maxMemoryMb: z.number().min(0).max(1e9).optional(),
  })
  .strict();
export type ReportedUsage = z.infer<typeof ReportedUsage>;

/** POST /v1/agent/jobs/{id}/running */
export const RunningReport = z.object({ epoch: Epoch }).strict();
export type RunningReport = z.infer<typeof RunningReport>;

/** POST /v1/agent/jobs/{id}/finish */
export const FinishReport = z
  .object({
    epoch: Epoch,
    reason: OutcomeReason,
    exitCode: z.number().int().min(-1_000_000).max(1_000_000).nullable().default(null),
    // Cleaned, never refused: the agent drops a report answered 4xx, and the job would run again.
    error: z.string().max(4096).overwrite(cleanNodeMessage).optional(),
    usage: ReportedUsage.optional(),
  })
  .strict();
export type FinishReport = z.infer<typeof FinishReport>;
export type FinishReportInput = z.input<typeof FinishReport>;

/** GET /.well-known/jwks.json: the public keys leases are signed with (each a JWK, read by jose). */
export const Jwks = z.object({ keys: z.array(z.looseObject({ kty: z.string() })) });

/** The job as the agent's report left it. */
export const ReportAnswer = z.object({
  jobId: z.string(),
  status: z.enum(['queued', 'leased', 'running', 'succeeded', 'failed', 'cancelled']),
  epoch: Epoch,
});
export type ReportAnswer = z.infer<typeof ReportAnswer>;

/** A lease a heartbeat renewed: its new expiry, and a fresh token when the old one neared its end. */
export const LeaseRenewal = z.object({
  jobId: z.string(),
  epoch: Epoch,
  expiresAt: z.string(),
  expiresInMs: z.number().int(),
  token: z.string().optional(),
});
export type LeaseRenewal = z.infer<typeof LeaseRenewal>;

/** What the lease side adds to a heartbeat answer (shared/nodes.ts HeartbeatAnswer passes it through). */
export const LeaseHeartbeatExtras = z.object({
  /** Every job the agent reported that it still holds at that epoch, with its renewed expiry. */
  leases: z.array(LeaseRenewal),
  /** Jobs to stop and report as cancelled: their owner cancelled them. */
  cancel: z.array(LeaseRef),
  /** Jobs the agent reported that it no longer holds at that epoch: stop them, report nothing. */
  revoked: z.array(LeaseRef),
  /** The node takes no new work until its provider undrains it. */
  draining: z.boolean(),
});
export type LeaseHeartbeatExtras = z.infer<typeof LeaseHeartbeatExtras>;

/** POST /v1/nodes/{id}/drain and /undrain */
export const DrainState = z.object({
  nodeId: z.string(),
  status: z.enum(['online', 'offline', 'retired']),
  draining: z.boolean(),
  /** Jobs still leased or running on it: a draining node finishes them. */
  liveJobs: z.number().int(),
});
export type DrainState = z.infer<typeof DrainState>;
