// What the agent tells the coordinator about its machine: the inventory at registration, the
// live figures in each heartbeat. Both come out valid under the shared schemas and neither
// throws for a missing or broken GPU stack: that is a warning in the report.
import {
  HardwareReport,
  maxHardwareWarnings,
  maxWarningLength,
  MetricsSample,
} from '../../shared/hardware.ts';
import { detectHost, sampleHostMetrics, type RuntimePolicy } from './host.ts';
import { defaultDetectTimeoutMs, defaultQueryTimeoutMs, detectNvidiaGpus, sampleNvidiaMetrics } from './nvidia.ts';

export interface DetectHardwareOptions {
  /** The agent's work dir, whose free space is reported (default: the current dir). */
  workDir?: string;
  /** PATH (for nvidia-smi) and DOCKER_HOST are read from here (default: process.env). */
  env?: NodeJS.ProcessEnv;
  /** Limit for each nvidia-smi call. */
  timeoutMs?: number;
  dockerTimeoutMs?: number;
  policy?: RuntimePolicy;
}

export interface SampleMetricsOptions {
  env?: NodeJS.ProcessEnv;
  timeoutMs?: number;
  now?: () => Date;
  /** Where a failed GPU sample is told (the sample itself then has no GPUs). */
  onWarning?: (warning: string) => void;
}

function boundedWarnings(warnings: string[]): string[] {
  const clipped = warnings.map((w) => (w.length <= maxWarningLength ? w : `${w.slice(0, maxWarningLength - 1)}…`));
  if (clipped.length <= maxHardwareWarnings) return clipped;
  return [...clipped.slice(0, maxHardwareWarnings - 1), `${clipped.length - maxHardwareWarnings + 1} more warnings not shown`];
}

export async function detectHardware(opts: DetectHardwareOptions = {}): Promise<HardwareReport> {
  const env = opts.env ?? process.env;
  const [host, nvidia] = await Promise.all([
    detectHost({ workDir: opts.workDir ?? process.cwd(), env, dockerTimeoutMs: opts.dockerTimeoutMs, ...(opts.policy ? { policy: opts.policy } : {}) }),
    detectNvidiaGpus({ path: env['PATH'] ?? '', timeoutMs: opts.timeoutMs ?? defaultDetectTimeoutMs }),
  ]);
  // What the coordinator will check: failing here is a bug in detection, not a bad machine.
  return HardwareReport.parse({
    host: host.host,
    gpus: nvidia.gpus,
    warnings: boundedWarnings([...nvidia.warnings, ...host.warnings]),
  });
}

export async function sampleMetrics(opts: SampleMetricsOptions = {}): Promise<MetricsSample> {
  const env = opts.env ?? process.env;
  const nvidia = await sampleNvidiaMetrics({ path: env['PATH'] ?? '', timeoutMs: opts.timeoutMs ?? defaultQueryTimeoutMs });
  for (const warning of nvidia.warnings) opts.onWarning?.(warning);
  return MetricsSample.parse({
    at: (opts.now?.() ?? new Date()).toISOString(),
    host: sampleHostMetrics(),
    gpus: nvidia.gpus,
  });
}

export type { GpuDevice, GpuMetrics, HardwareReport, HostInfo, HostMetrics, MetricsSample } from '../../shared/hardware.ts';
