import { z } from 'zod';
import { RegistryHost } from './images.ts';

// What an agent reports about its machine: at registration (HardwareReport) and in every
// heartbeat (MetricsSample). The coordinator validates both with exactly these schemas, so
// every field is bounded and unknown fields are refused.

/** Schedulable GPU units on one node: whole GPUs plus MIG devices (8 GPUs × 7 MIG = 56). */
export const maxGpusPerNode = 64;
export const maxHardwareWarnings = 32;
export const maxWarningLength = 1000;

// The largest figures accepted. A GPU's framebuffer matches GpuRequest.minMemoryMb's bound.
export const maxGpuMemoryMb = 4_194_304;
export const maxHostMemoryMb = 67_108_864; // 64 TiB
export const maxDiskMb = 1_073_741_824; // 1 PiB
export const maxCpuCores = 4096;

const mb = (max: number) => z.number().int().min(0).max(max);
// Printable text on one line: what nvidia-smi and the OS print, nothing that breaks a log line.
const printable = (max: number) =>
  z
    .string()
    .min(1)
    .max(max)
    .regex(/^[^\x00-\x1f\x7f]+$/, 'printable characters only');

/**
 * What a lease names: a whole GPU's UUID, a MIG device's UUID (`MIG-…`), or
 * `<parent uuid>:<gpu instance>:<compute instance>` where nvidia-smi gives no MIG UUID.
 */
export const GpuId = z
  .string()
  .min(1)
  .max(128)
  .regex(/^[A-Za-z0-9][A-Za-z0-9:/._-]*$/, 'letters, digits and : / . _ -');
export type GpuId = z.infer<typeof GpuId>;

export const GpuUuid = z
  .string()
  .min(1)
  .max(64)
  .regex(/^[A-Za-z0-9][A-Za-z0-9._-]*$/, 'letters, digits and . _ -');

/** Like "12.4": the form GpuRequest.minCudaVersion asks for. */
export const CudaVersion = z.string().regex(/^\d{1,3}\.\d{1,3}$/, 'like 12.4');

export const MigPlacement = z.strictObject({
  /** The MIG device's index on its parent GPU: `Device N` in `nvidia-smi -L`, and `<gpu>:<N>` in NVIDIA_VISIBLE_DEVICES. */
  index: z.number().int().min(0).max(63),
  gpuInstanceId: z.number().int().min(0).max(255),
  computeInstanceId: z.number().int().min(0).max(255),
});
export type MigPlacement = z.infer<typeof MigPlacement>;

/** One schedulable unit: a whole GPU, or one MIG device of a MIG-enabled GPU. */
export const GpuDevice = z.strictObject({
  id: GpuId,
  /** Position in nvidia-smi's order (what `nvidia-smi -i` and NVIDIA_VISIBLE_DEVICES use); a MIG device has its parent's. */
  index: z.number().int().min(0).max(maxGpusPerNode - 1),
  /** The physical GPU's UUID; MIG devices share their parent's. */
  uuid: GpuUuid,
  /** nvidia-smi's product name as printed; a MIG device has its parent's. */
  model: printable(128),
  /** Total framebuffer in MiB (a MIG device: its own slice). */
  memoryMb: mb(maxGpuMemoryMb),
  driverVersion: printable(32),
  cudaVersion: CudaVersion.nullable(),
  pciBusId: z
    .string()
    .max(32)
    .regex(/^[0-9A-Fa-f]+:[0-9A-Fa-f]+:[0-9A-Fa-f]+\.[0-9A-Fa-f]+$/, 'domain:bus:device.function')
    .nullable(),
  mig: MigPlacement.nullable(),
});
export type GpuDevice = z.infer<typeof GpuDevice>;

/** A job's network (JobSpec.network): `bridge` reaches the internet, `none` has no network. */
export const JobNetwork = z.enum(['bridge', 'none']);
export type JobNetwork = z.infer<typeof JobNetwork>;

export const ContainerRuntime = z.discriminatedUnion('kind', [
  z.strictObject({
    kind: z.literal('docker'),
    version: printable(64),
    /** The registries the agent pulls jobs' images from; absent (an older agent): not said. */
    registries: z.array(RegistryHost).min(1).max(64).optional(),
    /**
     * The job networks it takes: `bridge` only where its isolation rules are in force (no other
     * job, host, private range or link-local address reachable). Absent (an older agent): not said.
     */
    networks: z.array(JobNetwork).max(2).optional(),
  }),
  z.strictObject({ kind: z.literal('none') }),
]);
export type ContainerRuntime = z.infer<typeof ContainerRuntime>;

export const HostInfo = z.strictObject({
  cpuCores: z.number().int().min(1).max(maxCpuCores),
  cpuModel: printable(256),
  memoryMb: mb(maxHostMemoryMb),
  /** Free space for the agent's work dir (inputs, outputs). */
  diskFreeMb: mb(maxDiskMb),
  /** Kernel name and release, e.g. "Linux 6.1.0-18-amd64". */
  os: printable(128),
  /** Node's name for the CPU architecture: x64, arm64, … */
  arch: printable(32),
  hostname: printable(253),
  containerRuntime: ContainerRuntime,
});
export type HostInfo = z.infer<typeof HostInfo>;

const Warnings = z.array(z.string().min(1).max(maxWarningLength)).max(maxHardwareWarnings);

/** `gantry-agent hardware --json`, and the hardware part of a registration. */
export const HardwareReport = z
  .strictObject({
    host: HostInfo,
    gpus: z.array(GpuDevice).max(maxGpusPerNode),
    /** What detection could not see, in words (no nvidia-smi, driver errors, skipped devices). */
    warnings: Warnings,
  })
  .superRefine((report, ctx) => {
    const seen = new Set<string>();
    report.gpus.forEach((gpu, i) => {
      if (seen.has(gpu.id)) ctx.addIssue({ code: 'custom', path: ['gpus', i, 'id'], message: `duplicate GPU id ${gpu.id}` });
      seen.add(gpu.id);
    });
  });
export type HardwareReport = z.infer<typeof HardwareReport>;

/** Live figures of one physical GPU, keyed by its UUID; null where the driver reports none ("N/A"). */
export const GpuMetrics = z.strictObject({
  id: GpuId,
  utilizationPct: z.number().min(0).max(100).nullable(),
  memoryUsedMb: mb(maxGpuMemoryMb).nullable(),
  temperatureC: z.number().min(0).max(200).nullable(),
  powerW: z.number().min(0).max(100_000).nullable(),
});
export type GpuMetrics = z.infer<typeof GpuMetrics>;

export const HostMetrics = z.strictObject({
  loadAvg1: z.number().min(0).max(1_000_000),
  memoryUsedMb: mb(maxHostMemoryMb),
});
export type HostMetrics = z.infer<typeof HostMetrics>;

/** What each heartbeat carries. */
export const MetricsSample = z.strictObject({
  at: z.iso.datetime({ offset: true }).optional(),
  host: HostMetrics,
  gpus: z.array(GpuMetrics).max(maxGpusPerNode),
});
export type MetricsSample = z.infer<typeof MetricsSample>;
