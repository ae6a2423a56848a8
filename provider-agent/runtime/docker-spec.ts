import type Docker from 'dockerode';
import type { LeaseGpu, LeaseGrant } from '../../shared/leases.ts';

/** Labels on every container the agent makes: how it finds them again after its own restart. */
export const labels = {
  managed: 'io.gantry.managed',
  node: 'io.gantry.node',
  job: 'io.gantry.job',
  lease: 'io.gantry.lease',
  epoch: 'io.gantry.epoch',
} as const;

export const defaultShmMb = 1024;
export const defaultPidsLimit = 4096;
/** Where the job's HOME is (a tmpfs): images rarely have a writable home on a read-only root. */
export const jobHome = '/home/gantry';

export interface ContainerSpecOptions {
  nodeId: string;
  /** The image to create from: its content id (sha256:...), so a moved tag cannot change what runs. */
  imageId: string;
  /** The job's volumes (names of engine volumes): /inputs read-only, /outputs and the image's own VOLUME paths writable. */
  volumes: JobVolume[];
  /** The job's network: the agent's isolated gantry-jobs for `bridge` (default: the spec's own name), or none. */
  networkMode?: string;
  /** Turn IPv6 off inside a job that has a network (a kernel without IPv6 has nothing to turn off). */
  disableIpv6?: boolean;
  pidsLimit?: number;
  stopGraceSeconds: number;
  /** json-file rotation for the job's output, which the agent reads back from the engine. */
  logMaxSize?: string;
}

/**
 * The id the NVIDIA container runtime accepts for a leased GPU: a whole GPU by its UUID (by its index
 * where its UUID is another's too), a MIG
 * device by its MIG UUID, or (drivers that give MIG devices no UUID) the legacy
 * MIG-<parent GPU UUID>/<GPU instance>/<compute instance> form.
 */
export function nvidiaDeviceId(gpu: LeaseGpu): string {
  // GPUs that share one UUID are named <uuid>/<PCI bus id>: the UUID would select both, the index one.
  if (!gpu.mig && gpu.uuid && gpu.id.startsWith(`${gpu.uuid}/`)) return String(gpu.index);
  if (!gpu.mig) return gpu.uuid || gpu.id;
  if (gpu.id.startsWith('MIG-')) return gpu.id;
  return `MIG-${gpu.uuid}/${gpu.mig.gpuInstanceId}/${gpu.mig.computeInstanceId}`;
}

export const containerName = (jobId: string, epoch: number) => `gantry-${jobId}-${epoch}`;

/** An engine volume of a job's run, and where the job sees it. */
export interface JobVolume {
  name: string;
  target: string;
  readOnly: boolean;
}

/** The volumes of a run are named after its container, so a sweep finds them by name and label alike. */
export const volumeName = (jobId: string, epoch: number, what: string) => `${containerName(jobId, epoch)}-${what}`;

/** The container a lease becomes: exactly what the lease grants, hardened. */
export function containerSpec(grant: LeaseGrant, o: ContainerSpecOptions): Docker.ContainerCreateOptions {
  const { spec } = grant;
  const devices = grant.gpus.map(nvidiaDeviceId);
  const memoryBytes = grant.memoryMb * 1024 * 1024;
  const env: Record<string, string> = {
    HOME: jobHome,
    ...spec.env,
    // CUDA images default this to "all": the lease's GPUs and nothing else, or none at all.
    NVIDIA_VISIBLE_DEVICES: devices.length ? devices.join(',') : 'void',
    GANTRY_JOB_ID: grant.jobId,
    ...taskEnv(grant),
  };
  if (devices.length && !spec.env?.NVIDIA_DRIVER_CAPABILITIES) env.NVIDIA_DRIVER_CAPABILITIES = 'compute,utility';
  // Bounded: a tmpfs is the job's memory (charged to its cgroup), never more than its limit.
  const tmpfs = `rw,exec,nosuid,nodev,mode=1777,size=${memoryBytes}`;
  return {
    name: containerName(grant.jobId, grant.epoch),
    Image: o.imageId,
    Cmd: spec.command,
    ...(spec.entrypoint ? { Entrypoint: spec.entrypoint } : {}),
    Env: Object.entries(env).map(([k, v]) => `${k}=${v}`),
    Labels: {
      [labels.managed]: 'true',
      [labels.node]: o.nodeId,
      [labels.job]: grant.jobId,
      [labels.lease]: grant.leaseId,
      [labels.epoch]: String(grant.epoch),
    },
    Tty: false,
    OpenStdin: false,
    AttachStdin: false,
    AttachStdout: false,
    AttachStderr: false,
    StopTimeout: o.stopGraceSeconds,
    HostConfig: {
      NanoCpus: grant.cpuMillis * 1_000_000,
      Memory: memoryBytes,
      // Equal to Memory: no swap, so going over is an OOM kill the engine reports (OOMKilled).
      MemorySwap: memoryBytes,
      PidsLimit: o.pidsLimit ?? defaultPidsLimit,
      CapDrop: ['ALL'],
      SecurityOpt: ['no-new-privileges'],
      ReadonlyRootfs: true,
      Tmpfs: { '/tmp': tmpfs, [jobHome]: tmpfs },
      ShmSize: (spec.resources.shmMb ?? defaultShmMb) * 1024 * 1024,
      // Engine volumes, not host folders: what the job leaves is read through the engine (links
      // resolve in the container's root), and no host path of the agent shows in its mounts.
      Mounts: o.volumes.map((v) => ({ Type: 'volume' as const, Source: v.name, Target: v.target, ReadOnly: v.readOnly })),
      NetworkMode: o.networkMode ?? spec.network,
      // No IPv6 in a job with a network: the isolation rules are written for IPv4.
      ...(o.disableIpv6 && (o.networkMode ?? spec.network) !== 'none' ? { Sysctls: { 'net.ipv6.conf.all.disable_ipv6': '1' } } : {}),
      // A tiny init as PID 1: signals reach the job's process, and its orphans are reaped.
      Init: true,
      AutoRemove: false,
      RestartPolicy: { Name: 'no' },
      LogConfig: { Type: 'json-file', Config: { 'max-size': o.logMaxSize ?? '100m', 'max-file': '2' } },
      ...(devices.length
        ? { DeviceRequests: [{ Driver: 'nvidia', DeviceIDs: devices, Capabilities: [['gpu']] }] }
        : {}),
    },
  };
}

/**
 * A job's part of the node's pids budget: in proportion to its CPUs (which the scheduler never
 * hands out twice), so all jobs together stay within the budget; at least 64 (a shell and a few
 * tools), at most the per-job cap.
 */
export function pidsShare(budget: number, cpuMillis: number, nodeCpuMillis: number, cap: number): number {
  return Math.max(64, Math.min(cap, Math.floor((budget * cpuMillis) / Math.max(1, nodeCpuMillis))));
}

/** A task of a job array learns which one it is (from the lease token the agent verified). */
export function taskEnv(grant: Pick<LeaseGrant, 'task'>): Record<string, string> {
  return grant.task ? { GANTRY_TASK_INDEX: String(grant.task.index), GANTRY_TASK_COUNT: String(grant.task.count) } : {};
}
