import { z } from 'zod';
import { hasMicroPrecision } from './money.ts';

const shortText = z.string().min(1).max(128);
const labelKey = z.string().min(1).max(63).regex(/^[A-Za-z0-9]([A-Za-z0-9._/-]*[A-Za-z0-9])?$/, 'letters, digits, . _ / -');
const labelValue = z.string().max(256);
export const Labels = z
  .record(labelKey, labelValue)
  .refine((r) => Object.keys(r).length <= 64, 'at most 64 labels');
export type Labels = z.infer<typeof Labels>;

export const Region = z.string().min(1).max(64).regex(/^[a-z0-9][a-z0-9-]*$/, 'lowercase letters, digits and -');

// A Docker image reference: [registry[:port]/]path[:tag][@sha256:digest].
export const ImageRef = z
  .string()
  .min(1)
  .max(512)
  .regex(
    /^[a-z0-9]+([._-][a-z0-9]+)*(:[0-9]+)?(\/[a-z0-9]+([._-]+[a-z0-9]+)*)*(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(@sha256:[a-f0-9]{64})?$/,
    'not a container image reference',
  );

const envName = z.string().min(1).max(256).regex(/^[A-Za-z_][A-Za-z0-9_]*$/, 'not an environment variable name');

export const Price = z
  .number()
  .min(0)
  .max(1_000_000)
  .refine(hasMicroPrecision, 'at most 6 decimals');

export const BlobDigest = z.string().regex(/^sha256:[a-f0-9]{64}$/, 'sha256:<64 hex digits>');

/** Most tasks one array may have. */
export const maxTaskCount = 10_000;

export const JobInput = z
  .object({
    /** The blob; absent when perTask names one per task. */
    digest: BlobDigest.optional(),
    /** A job array's input that differs per task: task i gets perTask[i] at this path (length tasks.count). */
    perTask: z.array(BlobDigest).min(1).max(maxTaskCount).optional(),
    // Where it lands under /inputs: a file path, or a folder (ending in /) to unpack a tar into.
    path: z
      .string()
      .min(1)
      .max(256)
      .regex(/^(?!\/)(?!.*(^|\/)\.\.(\/|$))[A-Za-z0-9._/-]+$/, 'a relative path without ..'),
  })
  .strict()
  .refine((i) => (i.digest === undefined) !== (i.perTask === undefined), 'give either digest or perTask');
export type JobInput = z.infer<typeof JobInput>;

/**
 * One submit of many tasks (a job array, like Slurm's or Nomad's count): each task is a job of its
 * own, with GANTRY_TASK_INDEX (0-based) and GANTRY_TASK_COUNT in its env.
 */
export const TaskArray = z
  .object({
    count: z.number().int().min(1).max(maxTaskCount),
    /** At most this many tasks hold leases at once; all of them when not given. */
    maxParallel: z.number().int().min(1).max(maxTaskCount).optional(),
    /** The first task that fails for good cancels the rest. */
    failFast: z.boolean().default(false),
  })
  .strict()
  .refine((t) => t.maxParallel === undefined || t.maxParallel <= t.count, { message: 'maxParallel is at most count', path: ['maxParallel'] });
export type TaskArray = z.infer<typeof TaskArray>;

/** A job's disk budget when its spec names none: 10 GiB. */
export const defaultDiskMb = 10_240;

export const failureReasons = ['nonzero-exit', 'oom', 'timeout', 'disk'] as const;
export const FailureReason = z.enum(failureReasons);

export const GpuRequest = z
  .object({
    model: z.string().min(1).max(128).optional(),
    minMemoryMb: z.number().int().min(1).max(4_194_304).optional(),
    minCudaVersion: z.string().regex(/^\d{1,3}\.\d{1,3}$/, 'like 12.4').optional(),
  })
  .strict();

export const Resources = z
  .object({
    // Below 0.01 a core the engine's CFS quota is too small to run anything useful.
    cpu: z.number().min(0.01).max(1024).refine((n) => Number.isInteger(n * 1000), 'at most 3 decimals'),
    memoryMb: z.number().int().min(4).max(16_777_216),
    /** What the job may write (its /outputs and other writable paths), enforced by the agent while it runs. */
    diskMb: z.number().int().min(1).max(1_073_741_824).default(defaultDiskMb),
    gpus: z.number().int().min(0).max(64).default(0),
    gpu: GpuRequest.optional(),
    shmMb: z.number().int().min(1).max(1_048_576).optional(),
  })
  .strict();

export const Constraints = z
  .object({
    nodeLabels: Labels.optional(),
    region: Region.optional(),
    nodeId: z.string().max(64).optional(),
    providerId: z.string().max(64).optional(),
  })
  .strict();

/**
 * A job that serves HTTP on a port inside its node, reached through the coordinator on its own
 * origin (GANTRY_SERVICES_URL): the agent probes readinessPath (or a TCP connect) before it is ready.
 */
export const ServiceSpec = z
  .object({
    port: z.number().int().min(1).max(65_535),
    readinessPath: z
      .string()
      .max(1024)
      .regex(/^\/[\x21-\x7e]*$/, 'a path starting with /, printable ASCII without spaces')
      .optional(),
    /** Anyone may call it, without a key or service token. */
    public: z.boolean().default(false),
  })
  .strict();
export type ServiceSpec = z.infer<typeof ServiceSpec>;

/** What a client submits: everything a node needs to run the job, and what it may cost. */
export const JobSpec = z
  .object({
    name: shortText,
    image: ImageRef,
    entrypoint: z.array(z.string().max(4096)).min(1).max(64).optional(),
    command: z.array(z.string().max(16_384)).min(1).max(256),
    env: z
      .record(envName, z.string().max(32_768))
      .refine((r) => Object.keys(r).length <= 256, 'at most 256 variables')
      .optional(),
    resources: Resources,
    labels: Labels.optional(),
    constraints: Constraints.optional(),
    maxPricePerHour: Price.optional(),
    timeoutSeconds: z.number().int().min(1).max(30 * 24 * 3600).default(3600),
    maxAttempts: z.number().int().min(1).max(20).default(3),
    retryOn: z.array(FailureReason).max(4).optional(),
    priority: z.number().int().min(-1000).max(1000).default(0),
    network: z.enum(['bridge', 'none']).default('bridge'),
    inputs: z.array(JobInput).max(64).optional(),
    tasks: TaskArray.optional(),
    service: ServiceSpec.optional(),
  })
  .strict()
  .superRefine((spec, ctx) => {
    for (const [i, input] of (spec.inputs ?? []).entries()) {
      if (!input.perTask) continue;
      if (!spec.tasks) ctx.addIssue({ code: 'custom', path: ['inputs', i, 'perTask'], message: 'perTask needs tasks.count' });
      else if (input.perTask.length !== spec.tasks.count) {
        ctx.addIssue({ code: 'custom', path: ['inputs', i, 'perTask'], message: `needs one digest per task (${spec.tasks.count}), not ${input.perTask.length}` });
      }
    }
    // A service is reached through the job's network: without one nothing could answer.
    // One service is one job: a job array of services is not a thing (yet).
    if (spec.service && spec.tasks) ctx.addIssue({ code: 'custom', path: ['service'], message: 'a service cannot be a job array (tasks)' });
    if (spec.service && spec.network === 'none') {
      ctx.addIssue({ code: 'custom', path: ['network'], message: 'a service needs a network: network none cannot serve' });
    }
  });
export type JobSpec = z.infer<typeof JobSpec>;

/** What a task of an array runs: its array's spec with the array taken out and its own inputs in. */
export function taskSpec(spec: JobSpec, index: number): JobSpec {
  const { tasks: _tasks, inputs, ...rest } = spec;
  if (!inputs) return rest;
  return { ...rest, inputs: inputs.map((i) => ({ digest: i.perTask ? i.perTask[index]! : i.digest!, path: i.path })) };
}

/** The input digests a job names (every task's, for an array). */
export function inputDigests(spec: JobSpec): string[] {
  return (spec.inputs ?? []).flatMap((i) => i.perTask ?? (i.digest ? [i.digest] : []));
}

export const jobStatuses = ['queued', 'leased', 'running', 'succeeded', 'failed', 'cancelled'] as const;
export const JobStatus = z.enum(jobStatuses);
export type JobStatus = z.infer<typeof JobStatus>;
export const terminalStatuses: readonly JobStatus[] = ['succeeded', 'failed', 'cancelled'];
export const isTerminal = (s: JobStatus) => terminalStatuses.includes(s);

const timestamp = z.string().nullable();

/**
 * What a finished job used, metered from lease start to end (jobs.usage): GPU-seconds by model,
 * CPU-core-seconds, memory-MB-seconds.
 */
export const MeteredUsage = z.object({
  seconds: z.number().min(0),
  gpuSeconds: z.record(z.string(), z.number().min(0)),
  cpuCoreSeconds: z.number().min(0),
  memoryMbSeconds: z.number().min(0),
});
export type MeteredUsage = z.infer<typeof MeteredUsage>;

/** The prices a job's current (or last) lease was taken at, per hour, as decimals like every price. */
export const LeasePrices = z.object({
  perGpuHour: z.number(),
  perCpuHour: z.number(),
});
export type LeasePrices = z.infer<typeof LeasePrices>;

/** A job array's tasks by status (GET /v1/jobs/{id} of the array). */
export const TaskCounts = z.object({
  count: z.number().int(),
  maxParallel: z.number().int(),
  queued: z.number().int(),
  leased: z.number().int(),
  running: z.number().int(),
  succeeded: z.number().int(),
  failed: z.number().int(),
  cancelled: z.number().int(),
});
export type TaskCounts = z.infer<typeof TaskCounts>;

export const serviceStates = ['starting', 'ready', 'stopped'] as const;
export const ServiceStatus = z.object({
  state: z.enum(serviceStates),
  readyAt: timestamp,
  /** Requests the job answered through the coordinators so far (all replicas; a few seconds behind). */
  requests: z.number().int().min(0),
});
export type ServiceStatus = z.infer<typeof ServiceStatus>;

export const Job = z.object({
  id: z.string(),
  /** For a task of an array: the array (its parent job) and the task's index. */
  parentId: z.string().nullable().default(null),
  taskIndex: z.number().int().nullable().default(null),
  /** For an array: its tasks by status (its own status is derived from them). */
  tasks: TaskCounts.nullable().default(null),
  name: z.string(),
  status: JobStatus,
  spec: JobSpec,
  attempts: z.number().int(),
  maxAttempts: z.number().int(),
  priority: z.number().int(),
  nodeId: z.string().nullable(),
  gpuIds: z.array(z.string()).nullable(),
  leaseEpoch: z.number().int(),
  pendingReason: z.string().nullable(),
  cancelRequestedAt: timestamp,
  createdAt: z.string(),
  updatedAt: z.string(),
  leasedAt: timestamp,
  startedAt: timestamp,
  finishedAt: timestamp,
  exitCode: z.number().int().nullable(),
  error: z.string().nullable(),
  result: z.unknown().nullable(),
  /** Null until the job is first leased. */
  prices: LeasePrices.nullable(),
  /** What the job costs its owner so far: to now while it holds a lease, what was charged once it ended. */
  cost: z.number(),
  /** What it used, metered the same way as its cost; null until first leased. */
  usage: MeteredUsage.nullable(),
  /** Where the job answers (a service job only), on its own origin. */
  serviceUrl: z.string().nullable(),
  /** A service job's state: starting until the agent's probe passes, ready, stopped once the job ended. */
  service: ServiceStatus.nullable(),
});
export type Job = z.infer<typeof Job>;

export const JobListQuery = z.object({
  status: JobStatus.optional(),
});

/** GET /v1/jobs/{id}/tasks: an array's tasks in index order; the cursor is the last index seen. */
export const TaskListQuery = z
  .object({
    status: JobStatus.optional(),
    limit: z.coerce.number().int().min(1).max(1000).default(100),
    cursor: z.coerce.number().int().min(0).max(maxTaskCount).optional(),
  })
  .strict();

export const JobEvent = z.object({
  id: z.number().int(),
  at: z.string(),
  from: JobStatus.nullable(),
  to: JobStatus,
  reason: z.string(),
});
export type JobEvent = z.infer<typeof JobEvent>;

/** GET /v1/jobs/{id}/events */
export const JobEventList = z.object({ items: z.array(JobEvent) });
