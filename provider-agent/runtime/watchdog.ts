// The job containers' own deadlines: one small process per agent, started by the Docker runtime
// in a session and process group of its own, so that it keeps time while the agent does not
// (frozen by SIGSTOP, hung, or gone). The engine has no stop-at-deadline of its own.
//
//   node --import tsx watchdog.ts <work dir> <stop grace s> <margin ms>
//
// For each run, the agent writes the lease's end (local ms) and the container's id into
// <work dir>/jobs/<job>.<epoch>/lease-deadline.json at every renewal; the watchdog reads those
// files every second (sooner when an end is nearer). Once the time passes an end by the margin
// (the agent, when alive, stops the job at the end itself), it stops that container (SIGTERM,
// SIGKILL after the grace) if it still runs, notes it beside the deadline file (a restarted agent
// does not resume such a container), and goes on with the others. One process for all of a node's
// containers: a lease does not wait for, nor share the machine with, a Node process starting.
// It exits once the agent named in <work dir>/watchdog.owner is gone and no container is left to
// guard; the next agent starts a new one (or keeps this one: it names itself the owner first).
import { spawn, type ChildProcess } from 'node:child_process';
import { appendFile, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import Docker from 'dockerode';
import { dockerOptionsFromEnv } from './docker-options.ts';

/** The deadline file's content. */
export interface DeadlineFile {
  deadlineMs: number;
  /** The container the deadline is for. */
  containerId: string;
}

const watchdogEntry = fileURLToPath(import.meta.url);

/** The file the watchdog leaves beside a deadline file when it stopped that container. */
export const stoppedByWatchdog = 'stopped-by-watchdog';
/** Beside the jobs' folders in the work dir: the deadline file of each run. */
export const deadlineFileName = 'lease-deadline.json';

const pidFile = (workDir: string) => join(workDir, 'watchdog.pid');
const ownerFile = (workDir: string) => join(workDir, 'watchdog.owner');

function alive(pid: number): boolean {
  if (!Number.isInteger(pid) || pid <= 0) return false;
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/**
 * Keeps one watchdog running for the agent's work dir, detached from the agent (own session and
 * process group: a signal to the agent's group does not reach it). Cheap when one runs already:
 * this agent's own child is known alive without a file read, one an earlier agent started is
 * looked up once in /proc.
 */
export class Watchdog {
  private child: ChildProcess | null = null;
  private known: number | null = null;
  private owned = false;
  /** A check under way: runs that start together share it (and never start two watchdogs). */
  private checking: Promise<void> | null = null;

  constructor(
    private readonly workDir: string,
    private readonly stopGraceSeconds: number,
    private readonly marginMs: number,
  ) {}

  ensure(): Promise<void> {
    if (this.child && this.child.exitCode === null && this.child.signalCode === null) return Promise.resolve();
    this.checking ??= this.check().finally(() => {
      this.checking = null;
    });
    return this.checking;
  }

  private async check(): Promise<void> {
    // Named the owner first: a watchdog of an earlier agent that is about to exit sees it and stays.
    if (!this.owned) {
      await writeFile(ownerFile(this.workDir), String(process.pid), { mode: 0o600 });
      this.owned = true;
    }
    const pid = this.known ?? Number((await readFile(pidFile(this.workDir), 'utf8').catch(() => '')).trim());
    if (pid && (await isWatchdogOf(pid, this.workDir))) {
      this.known = pid;
      return;
    }
    this.known = null;
    const child = spawn(process.execPath, ['--import', import.meta.resolve('tsx'), watchdogEntry, this.workDir, String(this.stopGraceSeconds), String(this.marginMs)], {
      detached: true,
      stdio: 'ignore',
      env: process.env,
    });
    child.on('error', () => {});
    child.unref();
    this.child = child;
    if (child.pid) await writeFile(pidFile(this.workDir), String(child.pid), { mode: 0o600 });
  }
}

async function isWatchdogOf(pid: number, workDir: string): Promise<boolean> {
  const argv = (await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '')).split('\0');
  return argv.includes(watchdogEntry) && argv.includes(workDir);
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
const statusOf = (err: unknown) => (err as { statusCode?: number })?.statusCode;

async function readDeadline(file: string): Promise<DeadlineFile | 'gone' | null> {
  try {
    const v = JSON.parse(await readFile(file, 'utf8')) as Partial<DeadlineFile>;
    return typeof v.deadlineMs === 'number' && Number.isFinite(v.deadlineMs) && typeof v.containerId === 'string' && v.containerId ? (v as DeadlineFile) : null;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'ENOENT' ? 'gone' : null;
  }
}

async function watch(workDir: string, graceSeconds: number, marginMs: number): Promise<void> {
  const docker = new Docker({ ...dockerOptionsFromEnv(), timeout: 30_000 });
  const jobs = join(workDir, 'jobs');
  /** The last deadline read per run folder (a file caught mid-write keeps the last value). */
  const known = new Map<string, DeadlineFile>();
  /** Run folders whose container was stopped here or had ended at its deadline: done with. */
  const handled = new Set<string>();
  const stops = new Set<Promise<void>>();

  const stopPast = async (run: string, d: DeadlineFile) => {
    const dir = join(jobs, run);
    const container = docker.getContainer(d.containerId);
    try {
      const s = (await container.inspect()).State;
      if (!s.Running && s.Status !== 'created') return;
    } catch (err) {
      if (statusOf(err) === 404) return;
    }
    await appendFile(join(dir, 'watchdog.log'), `${new Date().toISOString()} the lease ended at ${new Date(d.deadlineMs).toISOString()} without a renewal: stopping container ${d.containerId}\n`).catch(() => {});
    // Marked first: an agent that starts meanwhile must not take the container's end for the job's own.
    await writeFile(join(dir, stoppedByWatchdog), new Date().toISOString()).catch(() => {});
    try {
      await container.stop({ t: graceSeconds });
    } catch (err) {
      if (statusOf(err) !== 304 && statusOf(err) !== 404) await container.kill().catch(() => {});
    }
  };

  for (;;) {
    const runs = await readdir(jobs).catch(() => [] as string[]);
    const present = new Set(runs);
    for (const run of [...known.keys()]) if (!present.has(run)) known.delete(run);
    for (const run of [...handled]) if (!present.has(run)) handled.delete(run);
    let nextDue = Number.POSITIVE_INFINITY;
    for (const run of runs) {
      if (handled.has(run)) continue;
      const read = await readDeadline(join(jobs, run, deadlineFileName));
      if (read === 'gone') {
        known.delete(run);
        continue;
      }
      if (read !== null) known.set(run, read);
      const d = known.get(run);
      if (!d) continue;
      const due = d.deadlineMs + marginMs;
      if (Date.now() >= due) {
        handled.add(run);
        const p = stopPast(run, d).finally(() => stops.delete(p));
        stops.add(p);
      } else nextDue = Math.min(nextDue, due);
    }
    if (!known.size || [...known.keys()].every((r) => handled.has(r))) {
      // Nothing left to guard: exit if the agent that owns this work dir is gone.
      const owner = Number((await readFile(ownerFile(workDir), 'utf8').catch(() => '')).trim());
      if (!alive(owner)) {
        await Promise.all(stops);
        // The pid file goes first; an agent that named itself owner meanwhile keeps this watchdog.
        const mine = Number((await readFile(pidFile(workDir), 'utf8').catch(() => '')).trim()) === process.pid;
        if (mine) await rm(pidFile(workDir), { force: true }).catch(() => {});
        const now = Number((await readFile(ownerFile(workDir), 'utf8').catch(() => '')).trim());
        if (!alive(now)) return;
        if (mine) await writeFile(pidFile(workDir), String(process.pid), { mode: 0o600 }).catch(() => {});
      }
    }
    await sleep(Math.max(50, Math.min(1000, nextDue - Date.now())));
  }
}

if (process.argv[1] === watchdogEntry) {
  const [workDir, grace, margin] = process.argv.slice(2);
  if (!workDir) process.exit(2);
  await watch(workDir, Number(grace) || 10, Number(margin) || 0).catch(() => {});
  process.exit(0);
}
