// The host: CPU, memory, disk, OS (node:os, fs.statfs) and the container runtime, found by
// asking the Docker engine for GET /version. Nothing here throws for a missing part: it
// reports what it found and says what it could not see in a warning.
import { statfs } from 'node:fs/promises';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import {
  maxCpuCores,
  maxDiskMb,
  maxHostMemoryMb,
  type ContainerRuntime,
  type HostInfo,
  type HostMetrics,
  type JobNetwork,
} from '../../shared/hardware.ts';

export interface HostOptions {
  /** The agent's work dir: its free space is what jobs get. It need not exist yet. */
  workDir: string;
  /** Where DOCKER_HOST is read (default: process.env). */
  env?: NodeJS.ProcessEnv;
  dockerTimeoutMs?: number;
  /** What the agent's Docker runtime takes (registries, job networks) and the disk it keeps back. */
  policy?: RuntimePolicy;
}

/** What the node's Docker runtime takes, as the agent's settings and checks say. */
export interface RuntimePolicy {
  registries: readonly string[];
  networks: readonly JobNetwork[];
  /** Free disk the node does not offer: the room its image cache may still grow into. */
  reservedDiskMb: number;
  /** Why `bridge` is not among the networks, for the report's warnings. */
  networkWarning?: string;
}

export const defaultDockerTimeoutMs = 2_000;
const defaultDockerSocket = '/var/run/docker.sock';
const mib = 1024 * 1024;

function oneLine(text: string, max: number): string {
  const t = text.replace(/[\x00-\x1f\x7f]+/g, ' ').replace(/\s+/g, ' ').trim();
  return (t === '' ? 'unknown' : t).slice(0, max);
}

/** Free MiB for unprivileged users on the file system holding `dir`, or its nearest existing parent. */
export async function diskFreeMb(dir: string): Promise<number> {
  let at = path.resolve(dir);
  for (;;) {
    try {
      const fs = await statfs(at);
      return Math.min(maxDiskMb, Math.floor((Number(fs.bavail) * Number(fs.bsize)) / mib));
    } catch (err) {
      const parent = path.dirname(at);
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT' || parent === at) throw err;
      at = parent;
    }
  }
}

type Endpoint = { socketPath: string; label: string } | { host: string; port: number; label: string };

/** DOCKER_HOST as the docker CLI reads it: unix:///path or tcp://host:port; unset is the default socket. */
export function dockerEndpoint(dockerHost: string | undefined): Endpoint | { unsupported: string } {
  const value = dockerHost?.trim() || `unix://${defaultDockerSocket}`;
  if (value.startsWith('unix://')) return { socketPath: value.slice('unix://'.length), label: value };
  if (value.startsWith('tcp://') || value.startsWith('http://')) {
    const url = new URL(value.replace(/^tcp:/, 'http:'));
    return { host: url.hostname, port: Number(url.port || 2375), label: value };
  }
  return { unsupported: value };
}

/** Asks the engine for GET /version; `none` (and why) where no engine answers in time. */
export function detectContainerRuntime(
  dockerHost: string | undefined,
  timeoutMs = defaultDockerTimeoutMs,
): Promise<{ runtime: ContainerRuntime; warning: string | null }> {
  const endpoint = dockerEndpoint(dockerHost);
  const none = (why: string) => ({ runtime: { kind: 'none' } as const, warning: oneLine(`no container runtime: ${why}`, 500) });
  if ('unsupported' in endpoint) return Promise.resolve(none(`DOCKER_HOST=${endpoint.unsupported} is not unix:// or tcp://`));
  const target = 'socketPath' in endpoint ? { socketPath: endpoint.socketPath } : { host: endpoint.host, port: endpoint.port };

  return new Promise((resolve) => {
    let settled = false;
    const finish = (result: { runtime: ContainerRuntime; warning: string | null }) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      req.destroy();
      resolve(result);
    };
    const timer = setTimeout(() => finish(none(`the Docker engine at ${endpoint.label} did not answer within ${timeoutMs} ms`)), timeoutMs);
    const req = http.get({ ...target, path: '/version', headers: { host: 'docker' } }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => {
        body += chunk;
        if (body.length > 64 * 1024) finish(none(`the Docker engine at ${endpoint.label} answered too much`));
      });
      res.on('end', () => {
        if (res.statusCode !== 200) return finish(none(`the Docker engine at ${endpoint.label} answered ${res.statusCode}`));
        let version: unknown;
        try {
          version = (JSON.parse(body) as { Version?: unknown }).Version;
        } catch {
          // not JSON: reported below
        }
        if (typeof version !== 'string' || version.trim() === '') {
          return finish(none(`the Docker engine at ${endpoint.label} gave no version`));
        }
        finish({ runtime: { kind: 'docker', version: oneLine(version, 64) }, warning: null });
      });
      res.on('error', (err) => finish(none(`reading from ${endpoint.label}: ${err.message}`)));
    });
    req.on('error', (err: NodeJS.ErrnoException) =>
      finish(none(`no Docker engine at ${endpoint.label} (${err.code ?? err.message})`)),
    );
  });
}

export async function detectHost(opts: HostOptions): Promise<{ host: HostInfo; warnings: string[] }> {
  const env = opts.env ?? process.env;
  const warnings: string[] = [];
  const [disk, runtime] = await Promise.all([
    diskFreeMb(opts.workDir).catch((err: Error) => {
      warnings.push(oneLine(`free disk space of ${opts.workDir} unknown (${err.message}); reported as 0`, 500));
      return 0;
    }),
    detectContainerRuntime(env['DOCKER_HOST'], opts.dockerTimeoutMs),
  ]);
  if (runtime.warning) warnings.push(runtime.warning);
  if (runtime.runtime.kind === 'docker' && opts.policy?.networkWarning) warnings.push(oneLine(opts.policy.networkWarning, 500));
  const cpus = os.cpus();
  return {
    host: {
      cpuCores: Math.min(maxCpuCores, Math.max(cpus.length, os.availableParallelism())),
      cpuModel: oneLine(cpus[0]?.model ?? 'unknown', 256),
      memoryMb: Math.min(maxHostMemoryMb, Math.floor(os.totalmem() / mib)),
      diskFreeMb: Math.max(0, disk - (opts.policy?.reservedDiskMb ?? 0)),
      os: oneLine(`${os.type()} ${os.release()}`, 128),
      arch: oneLine(os.arch(), 32),
      hostname: oneLine(os.hostname(), 253),
      containerRuntime:
        runtime.runtime.kind === 'docker' && opts.policy
          ? { ...runtime.runtime, registries: [...opts.policy.registries], networks: [...opts.policy.networks] }
          : runtime.runtime,
    },
    warnings,
  };
}

export function sampleHostMetrics(): HostMetrics {
  const load = os.loadavg()[0] ?? 0;
  return {
    loadAvg1: Math.min(1_000_000, Math.round(Math.max(0, load) * 100) / 100),
    memoryUsedMb: Math.min(maxHostMemoryMb, Math.max(0, Math.floor((os.totalmem() - os.freemem()) / mib))),
  };
}
