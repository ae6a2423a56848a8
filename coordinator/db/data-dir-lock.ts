import { spawn } from 'node:child_process';
import { accessSync, closeSync, constants, openSync, readFileSync, rmSync, writeFileSync, writeSync } from 'node:fs';
import { hostname } from 'node:os';
import { delimiter, join } from 'node:path';

export class DataDirLockedError extends Error {
  constructor(readonly dataDir: string, readonly holder: string) {
    super(
      `the data dir ${dataDir} is in use by another coordinator (${holder}); stop it first, or set GANTRY_DATA_DIR to another folder`,
    );
  }
}

/** The holder's own words in the lock file: "pid N" (and its host when that is not this one). */
function describeHolder(content: string): string {
  const [pid, host] = content.trim().split(' ');
  if (!pid) return 'its pid is unknown';
  return host && host !== hostname() ? `pid ${pid} on ${host}` : `pid ${pid}`;
}

function findFlock(): string | null {
  for (const dir of (process.env.PATH ?? '').split(delimiter).concat(['/usr/bin', '/bin'])) {
    if (!dir) continue;
    try {
      accessSync(join(dir, 'flock'), constants.X_OK);
      return join(dir, 'flock');
    } catch {
      // not here
    }
  }
  return null;
}

/** flock's exit status when the lock is held by someone else. */
const heldElsewhere = 75;

/**
 * PGlite opens a data dir from two processes without complaint and corrupts it, so the
 * coordinator locks it. The lock is the kernel's (flock on `gantry.lock`), held by a small child
 * (`flock … cat`) that lives as long as this process: its stdin is a pipe from us, and when we
 * die, however we die, the pipe closes, the child ends and the kernel lets go of the lock. So a
 * live holder is told from a dead one whatever its pid and pid namespace (a coordinator as PID 1
 * in a container, two containers on one volume). The file itself stays: a lock on a file that was
 * removed and made again would exclude nobody. It holds the holder's pid, for the message only.
 * Where there is no flock(1) (it is in util-linux and busybox), a pid check stands in.
 */
export async function lockDataDir(dataDir: string): Promise<() => void> {
  const flock = findFlock();
  if (!flock) return lockByPid(dataDir);
  const path = join(dataDir, 'gantry.lock');
  closeSync(openSync(path, 'a', 0o600));
  // Its own process group: a Ctrl-C meant for the coordinator must not end the lock before the
  // coordinator has closed the database. --close: only flock holds the lock, not cat.
  const holder = spawn(flock, ['--exclusive', '--nonblock', '--close', '--conflict-exit-code', String(heldElsewhere), path, 'sh', '-c', 'echo locked; exec cat >/dev/null'], {
    stdio: ['pipe', 'pipe', 'pipe'],
    detached: true,
  });
  let stderr = '';
  holder.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  const outcome = await new Promise<'locked' | { code: number | null; error?: Error }>((resolve) => {
    holder.stdout!.once('data', () => resolve('locked'));
    holder.once('exit', (code) => resolve({ code }));
    holder.once('error', (error) => resolve({ code: null, error }));
  });
  if (outcome !== 'locked') {
    if (outcome.code === heldElsewhere) {
      let content = '';
      try {
        content = readFileSync(path, 'utf8');
      } catch {
        // unreadable: the message says less
      }
      throw new DataDirLockedError(dataDir, describeHolder(content));
    }
    throw new Error(`could not lock ${dataDir}: ${outcome.error?.message ?? (stderr.trim() || `flock exited ${outcome.code}`)}`);
  }
  writeFileSync(path, `${process.pid} ${hostname()}\n`);
  // The child must not keep this process alive: only the pipe ties it to us.
  holder.unref();
  for (const stream of [holder.stdin, holder.stdout, holder.stderr] as unknown as { unref?: () => void }[]) stream?.unref?.();
  let released = false;
  return () => {
    if (released) return;
    released = true;
    try {
      writeFileSync(path, '');
    } catch {
      // the dir went away
    }
    holder.stdin!.end();
    holder.kill();
  };
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** Without flock(1): a lock file holding our pid, taken over when that pid is not alive on this host. */
function lockByPid(dataDir: string): () => void {
  const path = join(dataDir, 'gantry.lock');
  const me = `${process.pid} ${hostname()}\n`;
  for (let tries = 0; tries < 2; tries++) {
    try {
      const fd = openSync(path, 'wx', 0o600);
      writeSync(fd, me);
      closeSync(fd);
      let released = false;
      const release = () => {
        if (released) return;
        released = true;
        try {
          if (readFileSync(path, 'utf8') === me) rmSync(path);
        } catch {
          // already gone
        }
      };
      process.once('exit', release);
      return release;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      const content = readFileSync(path, 'utf8');
      const [pidText, host] = content.trim().split(' ');
      const pid = Number(pidText);
      if (pid === process.pid || (host === hostname() && Number.isInteger(pid) && pid > 0 && alive(pid))) {
        throw new DataDirLockedError(dataDir, describeHolder(content));
      }
      rmSync(path, { force: true });
    }
  }
  throw new Error(`could not lock ${dataDir}`);
}
