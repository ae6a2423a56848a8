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

/** The local image the tests run: busybox-static, built by .ci/docker-setup.sh with `docker import`. */
export const dockerTestImage: string = process.env.GANTRY_TEST_IMAGE ?? 'gantry-test/busybox:latest';

/**
 * The same image in the loopback registry (127.0.0.1:5000/gantry/busybox:latest in CI), not
 * tagged locally, so that a test of the agent's pull path really pulls. Undefined when no
 * registry was set up: such a test skips on its own.
 */
export const registryImage: string | undefined = process.env.GANTRY_TEST_REGISTRY_IMAGE || undefined;

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

function statusOf(e: unknown): number | undefined {
  if (typeof e === 'object' && e !== null && 'statusCode' in e) {
    const s = (e as { statusCode: unknown }).statusCode;
    return typeof s === 'number' ? s : undefined;
  }
  return undefined;
}

async function check(): Promise<DockerAvailability> {
  const docker = new Docker(dockerOptions(5_000));
  try {
    await docker.ping();
  } catch (e) {
    return { ok: false, why: `no Docker engine answers at ${dockerHost} (${messageOf(e)}); start one with \`bash .ci/docker-setup.sh\`` };
  }
  try {
    await docker.getImage(dockerTestImage).inspect();
  } catch (e) {
    const why = statusOf(e) === 404 ? 'not found' : messageOf(e);
    return {
      ok: false,
      why: `test image ${dockerTestImage} is missing on the engine at ${dockerHost} (${why}); build it with \`bash .ci/docker-setup.sh\``,
    };
  }
  return { ok: true };
}

/** Pings the engine and checks that the test image exists. Checked once per process. */
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
