// A job container's own deadline: a small process the Docker runtime starts next to each
// container, in a session and process group of its own, so that it keeps time while the agent
// does not (frozen by SIGSTOP, hung, or gone). The engine has no stop-at-deadline of its own.
//
//   node --import tsx watchdog.ts <container id> <deadline file> <stop grace s> <margin ms>
//
// The agent writes the lease's end (local ms) into the deadline file at every renewal. Once the
// time passes that end by the margin (the agent, when alive, stops the job at the end itself),
// the watchdog stops the container (SIGTERM, SIGKILL after the grace), notes it beside the
// deadline file (a restarted agent does not resume such a container), and exits. It exits as
// well when the deadline file is removed (the run is over) or the container is gone or has ended.
import { spawn } from 'node:child_process';
import { appendFile, readFile, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import Docker from 'dockerode';
import { dockerOptionsFromEnv } from './docker-options.ts';

/** The deadline file's content. */
export interface DeadlineFile {
  deadlineMs: number;
}

const watchdogEntry = fileURLToPath(import.meta.url);

/** The file a watchdog leaves beside the deadline file when it stopped the container. */
export const stoppedByWatchdog = 'stopped-by-watchdog';

/**
 * Starts a watchdog for a container, detached from the agent (own session and process group:
 * a signal to the agent's group does not reach it); its pid goes beside the deadline file.
 */
export async function startWatchdog(containerId: string, deadlineFile: string, stopGraceSeconds: number, marginMs: number): Promise<number | undefined> {
  const pidFile = join(dirname(deadlineFile), 'watchdog.pid');
  const running = Number((await readFile(pidFile, 'utf8').catch(() => '')).trim());
  // One per container: an agent restarted while its watchdog lives on does not start a second.
  if (running && (await isWatchdog(running))) return running;
  const child = spawn(process.execPath, ['--import', import.meta.resolve('tsx'), watchdogEntry, containerId, deadlineFile, String(stopGraceSeconds), String(marginMs)], {
    detached: true,
    stdio: 'ignore',
    env: process.env,
  });
  child.on('error', () => {});
  child.unref();
  if (child.pid) await writeFile(pidFile, String(child.pid), { mode: 0o600 });
  return child.pid;
}

async function isWatchdog(pid: number): Promise<boolean> {
  const cmdline = await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '');
  return cmdline.includes(watchdogEntry);
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
const statusOf = (err: unknown) => (err as { statusCode?: number })?.statusCode;

async function readDeadline(file: string): Promise<number | 'gone' | null> {
  try {
    const v = (JSON.parse(await readFile(file, 'utf8')) as Partial<DeadlineFile>).deadlineMs;
    return typeof v === 'number' && Number.isFinite(v) ? v : null;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'ENOENT' ? 'gone' : null;
  }
}

async function watch(containerId: string, deadlineFile: string, graceSeconds: number, marginMs: number): Promise<void> {
  const docker = new Docker({ ...dockerOptionsFromEnv(), timeout: 30_000 });
  const container = docker.getContainer(containerId);
  const note = (line: string) => appendFile(join(dirname(deadlineFile), 'watchdog.log'), `${new Date().toISOString()} ${line}\n`).catch(() => {});
  let known: number | null = null;
  let nextLook = 0;
  for (;;) {
    const read = await readDeadline(deadlineFile);
    if (read === 'gone') return;
    // A file caught mid-write (it is renamed into place, but be sure) keeps the last value read.
    if (read !== null) known = read;
    const now = Date.now();
    if (now >= nextLook) {
      nextLook = now + 10_000;
      try {
        const s = (await container.inspect()).State;
        if (!s.Running && s.Status !== 'created') return;
      } catch (err) {
        if (statusOf(err) === 404) return;
      }
    }
    if (known !== null && Date.now() >= known + marginMs) {
      await note(`the lease ended at ${new Date(known).toISOString()} without a renewal: stopping container ${containerId}`);
      // Marked first: an agent that starts meanwhile must not take the container's end for the job's own.
      await writeFile(join(dirname(deadlineFile), stoppedByWatchdog), new Date().toISOString()).catch(() => {});
      try {
        await container.stop({ t: graceSeconds });
      } catch (err) {
        if (statusOf(err) !== 304 && statusOf(err) !== 404) await container.kill().catch(() => {});
      }
      return;
    }
    await sleep(known === null ? 1000 : Math.max(50, Math.min(1000, known + marginMs - Date.now())));
  }
}

if (process.argv[1] === watchdogEntry) {
  const [containerId, deadlineFile, grace, margin] = process.argv.slice(2);
  if (!containerId || !deadlineFile) process.exit(2);
  await watch(containerId, deadlineFile, Number(grace) || 10, Number(margin) || 0).catch(() => {});
  process.exit(0);
}
