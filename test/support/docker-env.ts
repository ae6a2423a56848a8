// Decides whether the Docker tests run. A test file does:
//
//   import { requireDockerOrSkip, dockerTestImage } from '../support/docker-env.ts';
//   const docker = await requireDockerOrSkip();
//   describe.skipIf(!docker)('agent runs a container', () => { ... });
//
// Without an engine or the test image, the tests are skipped with one warning line; with
// GANTRY_REQUIRE_DOCKER=1 (as .ci/run sets it) they fail instead, so CI cannot pass by
// skipping them. `bash .ci/docker-setup.sh` (as root) starts the engine, the loopback
// registry and builds the image on a developer's machine.
//
// Measured with this image on CI's engine (.ci/docker-setup.sh says how it is started):
// --network none, the default bridge (no egress), Memory + MemorySwap (an OOM kill exits 137
// with State.OOMKilled true), NanoCpus, PidsLimit, ReadonlyRootfs, Tmpfs, CapDrop ALL,
// SecurityOpt no-new-privileges and ShmSize all work. Tmpfs mounts are noexec,nosuid,nodev
// unless their options say `exec`. The image's busybox `wget` segfaults: use `nc`.
import Docker from 'dockerode';

/**
 * The image the tests' jobs run: busybox-static in the loopback registry of .ci/docker-setup.sh
 * (127.0.0.1:5000/gantry/busybox:latest), which the agent pulls by digest like any client image.
 * The local-only `gantry-test/busybox` it was built from is refused by the agent (no registry
 * digest): tests that start containers themselves may still use that one (localTestImage).
 */
export const testRegistry: string = process.env.GANTRY_TEST_REGISTRY || '127.0.0.1:5000';
export const dockerTestImage: string = process.env.GANTRY_TEST_REGISTRY_IMAGE || `${testRegistry}/gantry/busybox:latest`;
export const registryImage: string = dockerTestImage;
export const localTestImage: string = process.env.GANTRY_TEST_IMAGE ?? 'gantry-test/busybox:latest';

/**
 * What a test agent needs to pull the test image: the loopback registry named explicitly (an
 * agent refuses a loopback registry unless its provider names it). spawnAgent passes it.
 */
export const testRegistryAgentEnv: Record<string, string> = { GANTRY_AGENT_ALLOWED_REGISTRIES: testRegistry };

/**
 * Puts an image the engine holds into the loopback registry, so that an agent may run it (it runs
 * only what a registry serves). `ref` is the engine's tag of it under testRegistry.
 */
export async function pushToTestRegistry(docker: Docker, ref: string): Promise<void> {
  // The engine wants an auth header even for a registry without auth: an empty one.
  const stream = (await docker.getImage(ref).push({ authconfig: { serveraddress: testRegistry } } as never)) as unknown as NodeJS.ReadableStream;
  await new Promise<void>((resolve, reject) =>
    docker.modem.followProgress(stream, (err: Error | null, events: { error?: string }[]) => {
      const failed = events?.find((e) => e.error);
      if (err || failed) reject(err ?? new Error(failed!.error));
      else resolve();
    }),
  );
}

/** The engine address the tests use: DOCKER_HOST, else the system socket. */
export const dockerHost: string = process.env.DOCKER_HOST || 'unix:///var/run/docker.sock';

/** Options for `new Docker(...)` that reach the same engine as this module checked. */
export function dockerOptions(timeoutMs?: number): Docker.DockerOptions {
  // With DOCKER_HOST set, docker-modem reads it (unix://, tcp://, ssh://) itself; without
  // it, it would try ~/.docker/run/docker.sock first: say the system socket instead.
  const base: Docker.DockerOptions = process.env.DOCKER_HOST ? {} : { socketPath: '/var/run/docker.sock' };
  return timeoutMs === undefined ? base : { ...base, timeout: timeoutMs };
}

export type DockerAvailability = { ok: true } | { ok: false; why: string };

let checked: Promise<DockerAvailability> | undefined;

function messageOf(e: unknown): string {
  if (e instanceof Error) {
    const code = (e as NodeJS.ErrnoException).code;
    return code && !e.message.includes(code) ? `${code}: ${e.message}` : e.message;
  }
  return String(e);
}

async function check(): Promise<DockerAvailability> {
  const docker = new Docker(dockerOptions(5_000));
  try {
    await docker.ping();
  } catch (e) {
    return { ok: false, why: `no Docker engine answers at ${dockerHost} (${messageOf(e)}); start one with \`bash .ci/docker-setup.sh\`` };
  }
  try {
    // The registry's answer through the engine, as the agent asks it (no pull).
    await docker.getImage(dockerTestImage).distribution();
  } catch (e) {
    return {
      ok: false,
      why: `test image ${dockerTestImage} is not in the loopback registry (${messageOf(e)}); push it with \`bash .ci/docker-setup.sh\``,
    };
  }
  return { ok: true };
}

/** Pings the engine and checks that the registry holds the test image. Checked once per process. */
export function dockerAvailable(): Promise<DockerAvailability> {
  checked ??= check();
  return checked;
}

/**
 * True when the Docker tests can run. Otherwise: with GANTRY_REQUIRE_DOCKER=1 it throws
 * (CI fails, saying what is missing); without, it warns one line and returns false.
 */
export async function requireDockerOrSkip(): Promise<boolean> {
  const result = await dockerAvailable();
  if (result.ok) return true;
  if (process.env.GANTRY_REQUIRE_DOCKER === '1') {
    throw new Error(`GANTRY_REQUIRE_DOCKER=1 but Docker tests cannot run: ${result.why}`);
  }
  console.warn(`docker tests skipped: ${result.why}`);
  return false;
}
