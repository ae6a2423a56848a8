import { z } from 'zod';
import { GpuMetrics, HardwareReport, HostInfo, MetricsSample } from './hardware.ts';
import { idPattern } from './ids.ts';
import { Labels, Price, Region } from './jobs.ts';
import { LeaseRef } from './leases.ts';

// Wire shapes of enrollment, registration, heartbeats and node views. Prices travel as decimal
// currency units per hour (shared/money.ts keeps them as integer micro-units).

/** The longest an agent's own token may live: the coordinator refuses anything longer. */
export const agentTokenMaxLifetimeSeconds = 60;

export const nodeStatuses = ['online', 'offline', 'retired'] as const;
export const NodeStatus = z.enum(nodeStatuses);
export type NodeStatus = z.infer<typeof NodeStatus>;

export const NodeId = z.string().regex(idPattern('node'), 'not a node id');
export const NodeName = z
  .string()
  .min(1)
  .max(128)
  .regex(/^[^\x00-\x1f\x7f]+$/, 'no control characters');

export const CreateEnrollmentToken = z
  .object({
    uses: z.number().int().min(1).max(10_000).default(1),
    expiresInSeconds: z
      .number()
      .int()
      .min(60)
      .max(30 * 86_400)
      .default(86_400),
    labels: Labels.optional(),
  })
  .strict();
export type CreateEnrollmentToken = z.infer<typeof CreateEnrollmentToken>;

/** The one answer that carries the token in clear: it is never shown again. */
export const EnrollmentToken = z.object({
  id: z.string(),
  token: z.string(),
  usesLeft: z.number().int(),
  expiresAt: z.string(),
  labels: z.record(z.string(), z.string()),
});
export type EnrollmentToken = z.infer<typeof EnrollmentToken>;

/** A token as listed later: everything but the token itself, which is never shown again. */
export const EnrollmentTokenInfo = z.object({
  id: z.string(),
  prefix: z.string(),
  usesLeft: z.number().int(),
  expiresAt: z.string(),
  labels: z.record(z.string(), z.string()),
  createdAt: z.string(),
  revokedAt: z.string().nullable(),
});
export type EnrollmentTokenInfo = z.infer<typeof EnrollmentTokenInfo>;

/** The agent's Ed25519 public key as jose exports it. */
export const Ed25519PublicJwk = z
  .object({
    kty: z.literal('OKP'),
    crv: z.literal('Ed25519'),
    x: z.string().regex(/^[A-Za-z0-9_-]{43}$/, 'a base64url Ed25519 public key'),
    alg: z.literal('EdDSA').optional(),
    kid: z.string().max(128).optional(),
    use: z.literal('sig').optional(),
  })
  .strict();
export type Ed25519PublicJwk = z.infer<typeof Ed25519PublicJwk>;

const AgentVersion = z.string().min(1).max(64);

export const RegisterNode = z
  .object({
    token: z.string().min(1).max(256),
    publicKey: Ed25519PublicJwk,
    name: NodeName.optional(),
    labels: Labels.optional(),
    region: Region.optional(),
    priceGpuHour: Price.optional(),
    priceCpuHour: Price.optional(),
    agentVersion: AgentVersion.optional(),
    hardware: HardwareReport,
  })
  .strict();
export type RegisterNode = z.infer<typeof RegisterNode>;

export const RegisteredNode = z.object({
  nodeId: z.string(),
  name: z.string(),
  /** The audience of the agent's tokens and the issuer the agent expects on leases. */
  coordinatorName: z.string(),
  /** After this long without a heartbeat the node counts as offline. */
  nodeTtlSeconds: z.number().int(),
});
export type RegisteredNode = z.infer<typeof RegisteredNode>;

export const Heartbeat = z
  .object({
    /** The jobs the agent holds, at the lease epoch it holds each with. */
    jobs: z.array(LeaseRef).max(256).default([]),
    metrics: MetricsSample,
    /** Sent when the hardware changed since the last one the coordinator took (and at the first heartbeat). */
    hardware: HardwareReport.optional(),
    agentVersion: AgentVersion.optional(),
    /** False when the agent has no runtime to run jobs with: the node gets no leases. Absent: unchanged. */
    takesWork: z.boolean().optional(),
  })
  .strict();
export type Heartbeat = z.infer<typeof Heartbeat>;
export type HeartbeatInput = z.input<typeof Heartbeat>;

/**
 * The coordinator's answer. The lease side adds its own fields (renewed leases, cancellations)
 * through the heartbeat hook; they pass through this schema untouched.
 */
export const HeartbeatAnswer = z
  .object({
    nodeId: z.string(),
    status: NodeStatus,
    receivedAt: z.string(),
    /** The coordinator's GPU list does not match the metrics: send the hardware report next time. */
    hardwareWanted: z.boolean(),
    /** What the coordinator refused of a hardware report (a GPU another node holds). */
    warnings: z.array(z.string()),
  })
  .catchall(z.unknown());
export type HeartbeatAnswer = z.infer<typeof HeartbeatAnswer>;

export const NodeGpu = z.object({
  id: z.string(),
  index: z.number().int(),
  uuid: z.string(),
  model: z.string(),
  memoryMb: z.number().int(),
  driverVersion: z.string().nullable(),
  cudaVersion: z.string().nullable(),
  pciBusId: z.string().nullable(),
  mig: z.object({ index: z.number().int(), gpuInstanceId: z.number().int(), computeInstanceId: z.number().int() }).nullable(),
  /** The job holding this GPU, or null when it is free. */
  jobId: z.string().nullable(),
  /** The latest figures of its physical GPU (MIG devices show their parent's). */
  metrics: GpuMetrics.omit({ id: true }),
});
export type NodeGpu = z.infer<typeof NodeGpu>;

/** A node as its provider sees it. */
export const Node = z.object({
  id: z.string(),
  name: z.string(),
  status: NodeStatus,
  draining: z.boolean(),
  labels: z.record(z.string(), z.string()),
  region: z.string().nullable(),
  priceGpuHour: z.number(),
  priceCpuHour: z.number(),
  agentVersion: z.string().nullable(),
  capacity: z.object({ cpu: z.number(), memoryMb: z.number().int(), diskMb: z.number().int() }),
  /** diskMb: the disk budgets of the jobs on it, against the free disk it reported (capacity.diskMb). */
  allocated: z.object({ cpu: z.number(), memoryMb: z.number().int(), diskMb: z.number().int() }),
  host: HostInfo.nullable(),
  gpus: z.array(NodeGpu),
  lastHeartbeatAt: z.string().nullable(),
  metrics: MetricsSample.nullable(),
  createdAt: z.string(),
});
export type Node = z.infer<typeof Node>;

export const NodeListQuery = z.object({
  status: NodeStatus.optional(),
});

export const UpdateNode = z
  .object({
    name: NodeName.optional(),
    priceGpuHour: Price.optional(),
    priceCpuHour: Price.optional(),
    labels: Labels.optional(),
    region: Region.nullable().optional(),
  })
  .strict()
  .refine((u) => Object.keys(u).length > 0, 'name at least one field to change');
export type UpdateNode = z.infer<typeof UpdateNode>;

/** The longest range one metrics request may cover: what is kept. */
export const metricsRetentionDays = 7;

export const NodeMetricsQuery = z
  .object({
    since: z.iso.datetime({ offset: true }).optional(),
    until: z.iso.datetime({ offset: true }).optional(),
  })
  .strict();

export const NodeMetricsSeries = z.object({
  nodeId: z.string(),
  since: z.string(),
  until: z.string(),
  /** One sample per minute, oldest first: `at` is the minute it stands for. */
  items: z.array(z.object({ at: z.string(), sample: MetricsSample })),
});
export type NodeMetricsSeries = z.infer<typeof NodeMetricsSeries>;
