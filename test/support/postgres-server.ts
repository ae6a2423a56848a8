// A PostgreSQL server of the test's own (initdb and pg_ctl on a free port, in a temp dir), for
// tests that stop and restart the database: the shared server at 127.0.0.1:5432 is never touched.
import { execFileSync } from 'node:child_process';
import { chmodSync, chownSync, existsSync, mkdtempSync, rmSync } from 'node:fs';
import { freePort } from './ports.ts';
import { tmpdir, userInfo } from 'node:os';
import path from 'node:path';

const binDir = process.env.GANTRY_TEST_PG_BIN ?? '/usr/lib/postgresql/15/bin';

/** Why a server of our own cannot be started here, or null when it can (CI requires it). */
export function ownPostgresSkipReason(): string | null {
  let why: string | null = null;
  if (!existsSync(path.join(binDir, 'pg_ctl'))) why = `no PostgreSQL binaries in ${binDir} (set GANTRY_TEST_PG_BIN)`;
  else if (userInfo().uid === 0 && !hasPostgresUser()) why = 'running as root and there is no postgres user to run the server as';
  if (why && process.env.GANTRY_REQUIRE_POSTGRES === '1') throw new Error(`${why}, and GANTRY_REQUIRE_POSTGRES=1 says these tests must run`);
  if (why) console.warn(`PostgreSQL fault tests skipped: ${why}`);
  return why;
}

function hasPostgresUser(): boolean {
  try {
    execFileSync('id', ['-u', 'postgres'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

export interface PostgresServer {
  url: string;
  /** pg_ctl start, waiting until it takes connections. */
  start(): void;
  /** pg_ctl stop -m fast: sessions are ended, the server is gone until start(). */
  stop(): void;
  /** pg_ctl restart -m fast. */
  restart(): void;
  /** Stops it (if running) and removes its files. */
  destroy(): void;
}

/** initdb a new cluster in a temp dir and start it on a free loopback port (as postgres when we are root). */
export async function startPostgresServer(): Promise<PostgresServer> {
  const dir = mkdtempSync(path.join(tmpdir(), 'gantry-pg-'));
  const dataDir = path.join(dir, 'data');
  const port = await freePort();
  const asRoot = userInfo().uid === 0;
  if (asRoot) {
    const uid = Number(execFileSync('id', ['-u', 'postgres'], { encoding: 'utf8' }).trim());
    const gid = Number(execFileSync('id', ['-g', 'postgres'], { encoding: 'utf8' }).trim());
    chownSync(dir, uid, gid);
    chmodSync(dir, 0o700);
  }
  const run = (bin: string, args: string[]) => {
    const [cmd, argv] = asRoot ? ['runuser', ['-u', 'postgres', '--', path.join(binDir, bin), ...args]] : [path.join(binDir, bin), args];
    execFileSync(cmd as string, argv as string[], { stdio: ['ignore', 'pipe', 'pipe'], timeout: 60_000 });
  };
  run('initdb', ['-D', dataDir, '-U', 'postgres', '-A', 'trust', '--no-sync', '-E', 'UTF8']);
  const serverOptions = `-p ${port} -k ${dir} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off`;
  // -l: the server's output goes to a file, not to a pipe that would keep pg_ctl's caller waiting.
  const pgCtl = (...args: string[]) => run('pg_ctl', ['-D', dataDir, '-w', '-t', '60', '-l', path.join(dir, 'server.log'), ...args]);
  const start = () => pgCtl('-o', serverOptions, 'start');
  start();
  let running = true;
  return {
    url: `postgres://postgres@127.0.0.1:${port}/postgres`,
    start() {
      start();
      running = true;
    },
    stop() {
      pgCtl('-m', 'fast', 'stop');
      running = false;
    },
    restart() {
      pgCtl('-m', 'fast', '-o', serverOptions, 'restart');
      running = true;
    },
    destroy() {
      try {
        if (running) pgCtl('-m', 'immediate', 'stop');
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    },
  };
}
