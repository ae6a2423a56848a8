import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { z } from 'zod';
import { RuntimeEnv } from '../config.ts';
import Docker from 'dockerode';
import { dockerOptionsFromEnv } from './docker-options.ts';
import { DockerRuntime, probeDocker, type RuntimeLogger } from './docker.ts';
import { checkNetworkIsolation } from './network.ts';
import type { Executor } from './executor.ts';
import { imageCacheReserveMb } from './images.ts';
import type { RuntimePolicy } from '../hardware/host.ts';
import { ProcessRuntime, processRuntimeWarning } from './process.ts';
import { TestExecutor } from './test-executor.ts';

type Env = Record<string, string | undefined>;

export type RuntimeSettings = z.infer<typeof RuntimeEnv> & { workDir: string; pidsBudget: number };

/** The host's ceiling on process ids (threads included). */
function hostPidMax(): number {
  try {
    const n = Number(readFileSync('/proc/sys/kernel/pid_max', 'utf8').trim());
    return Number.isInteger(n) && n > 0 ? n : 32_768;
  } catch {
    return 32_768;
  }
}

export function runtimeSettings(stateDir: string, env: Env = process.env): RuntimeSettings {
  const present = Object.fromEntries(Object.entries(env).filter(([k, v]) => k.startsWith('GANTRY_AGENT_') && v !== undefined && v !== ''));
  const parsed = RuntimeEnv.safeParse(present);
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!;
    throw new RuntimeUnavailableError(`invalid setting ${String(issue.path[0])}: ${issue.message}`);
  }
  const pidMax = hostPidMax();
  const budget = parsed.data.GANTRY_AGENT_PIDS_BUDGET;
  if (budget !== undefined && budget > pidMax) {
    throw new RuntimeUnavailableError(`invalid setting GANTRY_AGENT_PIDS_BUDGET: ${budget} is above this host's pid_max (${pidMax})`);
  }
  return { ...parsed.data, workDir: parsed.data.GANTRY_AGENT_WORK_DIR ?? join(stateDir, 'work'), pidsBudget: budget ?? Math.floor(pidMax / 2) };
}

/**
 * What the Docker runtime takes, for the hardware report: the registries the provider allows, the
 * job networks it can isolate, and the disk its image cache may still grow into.
 */
export async function dockerRuntimePolicy(opts: { stateDir: string; allowedRegistries: readonly string[]; env?: Env; workDir?: string }): Promise<RuntimePolicy> {
  const settings = runtimeSettings(opts.stateDir, opts.env);
  const network = await checkNetworkIsolation(new Docker({ ...dockerOptionsFromEnv(), timeout: 5000 })).catch((err: Error) => ({ isolated: false as const, why: err.message }));
  const bridge = network.isolated || settings.GANTRY_AGENT_UNISOLATED_BRIDGE;
  return {
    registries: opts.allowedRegistries,
    networks: bridge ? ['bridge', 'none'] : ['none'],
    reservedDiskMb: await imageCacheReserveMb(opts.workDir ?? settings.workDir, settings.GANTRY_AGENT_IMAGE_CACHE_MB),
    ...(network.isolated
      ? {}
      : {
          networkWarning: settings.GANTRY_AGENT_UNISOLATED_BRIDGE
            ? `GANTRY_AGENT_UNISOLATED_BRIDGE=1: bridge jobs run on Docker's default bridge and can reach this host, its network and other jobs (${network.why})`
            : `this node takes only network: none jobs: ${network.why}`,
        }),
  };
}

/** No runtime can run jobs here: the agent says why and does not take work. */
export class RuntimeUnavailableError extends Error {}

export const noRuntimeAdvice =
  'install Docker (the agent uses the engine at DOCKER_HOST or /var/run/docker.sock), or pass --unsafe-process-runtime to run jobs as plain, unisolated processes';

/**
 * The executor `gantry-agent run` hands its leases to: Docker by default; the process runtime
 * only with --unsafe-process-runtime (said loudly); none otherwise, which is an error.
 */
export async function selectExecutor(opts: {
  nodeId: string;
  stateDir: string;
  unsafeProcessRuntime: boolean;
  testExecutor?: boolean;
  allowedRegistries?: readonly string[];
  log: RuntimeLogger;
  say: (line: string) => void;
  env?: Env;
}): Promise<{ executor: Executor; settings: RuntimeSettings }> {
  const settings = runtimeSettings(opts.stateDir, opts.env);
  if (opts.testExecutor) {
    opts.say('--test-executor: leases are completed by the test executor; nothing runs (tests only)');
    return { executor: new TestExecutor({ nodeId: opts.nodeId }), settings };
  }
  if (opts.unsafeProcessRuntime) {
    opts.say(processRuntimeWarning);
    const executor = new ProcessRuntime({
      workDir: settings.workDir,
      log: opts.log,
      stopGraceSeconds: settings.GANTRY_AGENT_STOP_GRACE_SECONDS,
      outputsMaxBytes: settings.GANTRY_AGENT_OUTPUTS_MAX_BYTES,
    });
    return { executor, settings };
  }
  const probe = await probeDocker();
  if (!probe.ok) throw new RuntimeUnavailableError(`this agent cannot run jobs: ${probe.why}; ${noRuntimeAdvice}`);
  opts.say(`jobs run as containers on Docker ${probe.version} (API ${probe.apiVersion})`);
  const executor = new DockerRuntime({
    nodeId: opts.nodeId,
    workDir: settings.workDir,
    log: opts.log,
    stopGraceSeconds: settings.GANTRY_AGENT_STOP_GRACE_SECONDS,
    outputsMaxBytes: settings.GANTRY_AGENT_OUTPUTS_MAX_BYTES,
    keepFailedContainers: settings.GANTRY_AGENT_KEEP_FAILED_CONTAINERS,
    imageCacheMb: settings.GANTRY_AGENT_IMAGE_CACHE_MB,
    unisolatedBridge: settings.GANTRY_AGENT_UNISOLATED_BRIDGE,
    ...(opts.allowedRegistries ? { allowedRegistries: opts.allowedRegistries } : {}),
    ...(settings.GANTRY_AGENT_PIDS_LIMIT ? { pidsLimit: settings.GANTRY_AGENT_PIDS_LIMIT } : {}),
    pidsBudget: settings.pidsBudget,
    diskSampleSeconds: settings.GANTRY_AGENT_DISK_SAMPLE_SECONDS,
  });
  return { executor, settings };
}
