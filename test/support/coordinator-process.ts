import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { lineCollector } from './lines.ts';

export const repoRoot = fileURLToPath(new URL('../..', import.meta.url));

export interface CoordinatorProcess {
  child: ChildProcess;
  /** Every stdout line so far. */
  stdout: string[];
  /** Every stderr line so far. */
  stderr: string[];
  /** Resolves with the "listening on" URL, or rejects when the process exits first. */
  ready: Promise<{ url: string; adminKey: string | null }>;
  /** Resolves with the exit code (null when killed by a signal) and the signal. */
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** Waits until a stdout line matches, or the deadline passes. */
  waitForLine(re: RegExp, timeoutMs?: number): Promise<string>;
  /** SIGTERM, then SIGKILL after the grace; resolves when it is gone. */
  stop(graceMs?: number): Promise<void>;
}

/** Whether a process holds the PGlite data dir's lock (the kernel's flock on gantry.lock), as a second coordinator would find. */
export function dataDirLockHeld(dataDir: string): boolean {
  return spawnSync('flock', ['--exclusive', '--nonblock', join(dataDir, 'gantry.lock'), 'true']).status !== 0;
}

/** The caller's environment without the coordinator's own settings, so a run sees only what it is given. */
export function cleanEnv(): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (v !== undefined && !k.startsWith('GANTRY_') && !['DATABASE_URL', 'PORT', 'HOST'].includes(k)) out[k] = v;
  }
  return out;
}

/**
 * `gantry-coordinator <args>` as its own process (node --import tsx, so that killing it kills
 * the server, not a wrapper), with `env` as its settings; a value of '' leaves one unset.
 * `launcher`: a command that runs the node process (e.g. unshare, to make it PID 1).
 */
export function spawnCoordinator(env: Record<string, string>, args: string[] = [], nodeArgs: string[] = [], launcher: string[] = []): CoordinatorProcess {
  const merged: Record<string, string> = {};
  for (const [k, v] of Object.entries({ ...cleanEnv(), ...env })) if (v !== undefined && v !== '') merged[k] = v;
  const argv = [process.execPath, ...nodeArgs, '--import', 'tsx', 'coordinator/main.ts', ...args];
  const command = [...launcher, ...argv];
  const child = spawn(command[0]!, command.slice(1), {
    cwd: repoRoot,
    env: merged,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const stdout: string[] = [];
  const stderr: string[] = [];
  const waiters: { re: RegExp; resolve: (line: string) => void }[] = [];
  child.stdout!.on(
    'data',
    lineCollector(stdout, (l) => {
      for (const w of [...waiters]) {
        if (w.re.test(l)) {
          waiters.splice(waiters.indexOf(w), 1);
          w.resolve(l);
        }
      }
    }),
  );
  child.stderr!.on('data', lineCollector(stderr));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.once('exit', (code, signal) => resolve({ code, signal })),
  );
  const waitForLine = (re: RegExp, timeoutMs = 60_000) => {
    const seen = stdout.find((l) => re.test(l));
    if (seen) return Promise.resolve(seen);
    return new Promise<string>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no stdout line matched ${re} in ${timeoutMs} ms; stderr: ${stderr.join('\n')}`)), timeoutMs);
      const waiter = {
        re,
        resolve: (l: string) => {
          clearTimeout(timer);
          resolve(l);
        },
      };
      waiters.push(waiter);
      void exited.then(({ code, signal }) => {
        clearTimeout(timer);
        reject(new Error(`coordinator exited (${code ?? signal}) before a line matched ${re}; stderr: ${stderr.join('\n')}`));
      });
    });
  };
  const ready = waitForLine(/^Gantry coordinator listening on /).then((line) => {
    const url = line.match(/listening on (\S+)/)![1]!;
    // The admin key line, when there is one, is written right after the listening line.
    const keyLine = stdout.find((l) => l.startsWith('Admin API key: '));
    return { url, adminKey: keyLine ? keyLine.slice('Admin API key: '.length).trim() : null };
  });
  ready.catch(() => {});
  return {
    child,
    stdout,
    stderr,
    ready,
    exited,
    waitForLine,
    async stop(graceMs = 10_000) {
      if (child.exitCode !== null || child.signalCode !== null) return;
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), graceMs);
      await exited;
      clearTimeout(timer);
    },
  };
}
