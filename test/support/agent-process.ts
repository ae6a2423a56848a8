// `gantry-agent <args>` as its own process (node --import tsx, so that a kill reaches the agent
// itself), and a coordinator in this process over a database of either kind, so one test file
// can run the agent against PGlite and PostgreSQL alike.
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import postgres from 'postgres';
import { loadConfig } from '../../coordinator/config.ts';
import { migrate } from '../../coordinator/db/migrate.ts';
import { openDatabase, type Database } from '../../coordinator/db/open.ts';
import { silentLogger } from '../../coordinator/log.ts';
import { startCoordinator, type Coordinator } from '../../coordinator/server.ts';
import { ApiClient } from '../../shared/client.ts';
import { repoRoot } from './coordinator-process.ts';
import { postgresAdminUrl } from './database.ts';
import { testRegistryAgentEnv } from './docker-env.ts';
import { lineCollector } from './lines.ts';

export interface AgentProcess {
  child: ChildProcess;
  stdout: string[];
  stderr: string[];
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** Waits until a stdout line matches, or the deadline passes (or the agent exits first). */
  waitForLine(re: RegExp, timeoutMs?: number): Promise<string>;
  kill(signal?: NodeJS.Signals): Promise<void>;
}

/**
 * `as`: run the agent as this user and group (a provider's own account, not root). `wrap`: run it
 * under another command, such as `nsenter --net=…` (which execs it: the same pid). `nodeArgs`: for
 * node itself (a benchmark's --cpu-prof).
 */
export function spawnAgent(args: string[], env: Record<string, string> = {}, as: { uid: number; gid: number } | null = null, wrap: string[] = [], nodeArgs: string[] = []): AgentProcess {
  const argv = [process.execPath, ...nodeArgs, '--import', 'tsx', 'provider-agent/main.ts', ...args];
  const child = spawn(wrap[0] ?? argv[0]!, [...wrap.slice(1), ...(wrap.length ? argv : argv.slice(1))], {
    cwd: repoRoot,
    // The loopback registry of the test image, allowed as a provider would name it, and bridge
    // jobs without the isolation rules (the shared engine runs with --iptables=false); a test of
    // either passes its own GANTRY_AGENT_ALLOWED_REGISTRIES or GANTRY_AGENT_UNISOLATED_BRIDGE.
    env: { ...process.env, ...testRegistryAgentEnv, GANTRY_AGENT_UNISOLATED_BRIDGE: '1', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
    ...(as ?? {}),
  });
  const stdout: string[] = [];
  const stderr: string[] = [];
  const waiters = new Set<{ re: RegExp; resolve: (l: string) => void }>();
  child.stdout!.on(
    'data',
    lineCollector(stdout, (l) => {
      for (const w of waiters) if (w.re.test(l)) (waiters.delete(w), w.resolve(l));
    }),
  );
  child.stderr!.on('data', lineCollector(stderr));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.once('exit', (code, signal) => resolve({ code, signal })),
  );
  return {
    child,
    stdout,
    stderr,
    exited,
    waitForLine(re, timeoutMs = 30_000) {
      const seen = stdout.find((l) => re.test(l));
      if (seen) return Promise.resolve(seen);
      return new Promise((resolve, reject) => {
        const fail = (why: string) => reject(new Error(`${why} before a stdout line matched ${re}\nstdout:\n${stdout.join('\n')}\nstderr:\n${stderr.join('\n')}`));
        const timer = setTimeout(() => fail(`${timeoutMs} ms passed`), timeoutMs);
        waiters.add({
          re,
          resolve: (l) => {
            clearTimeout(timer);
            resolve(l);
          },
        });
        void exited.then(({ code, signal }) => {
          clearTimeout(timer);
          fail(`the agent exited (${code ?? signal})`);
        });
      });
    },
    async kill(signal = 'SIGKILL') {
      if (child.exitCode !== null || child.signalCode !== null) return;
      child.kill(signal);
      await exited;
    },
  };
}

/** Runs a gantry-agent command to its end. */
export async function runAgentCommand(args: string[], env: Record<string, string> = {}, wrap: string[] = []) {
  const p = spawnAgent(args, env, null, wrap);
  const { code } = await p.exited;
  return { code, stdout: p.stdout, stderr: p.stderr };
}

export type DbKind = 'pglite' | 'postgres';

export interface LocalCoordinator {
  coordinator: Coordinator;
  url: string;
  database: Database;
  admin: ApiClient;
  /** Stops the server and leaves the database, so that start() can bring it back on the same port. */
  stop(): Promise<void>;
  start(): Promise<void>;
  close(): Promise<void>;
}

/** The real coordinator on a loopback port, over a fresh migrated database of the kind asked for. */
export async function startLocalCoordinator(kind: DbKind, env: Record<string, string> = {}): Promise<LocalCoordinator> {
  let database: Database;
  let drop = async () => {};
  if (kind === 'pglite') {
    database = await openDatabase({ dataDir: 'memory://' });
  } else {
    const name = `gantry_test_${randomBytes(6).toString('hex')}`;
    const admin = postgres(postgresAdminUrl, { max: 1, onnotice: () => {} });
    await admin.unsafe(`create database ${name}`);
    database = await openDatabase({ databaseUrl: postgresAdminUrl.replace(/\/[^/]*$/, `/${name}`), poolSize: 10 });
    drop = async () => {
      await admin.unsafe(`drop database if exists ${name} with (force)`);
      await admin.end({ timeout: 5 });
    };
  }
  await migrate(database);
  let port = '0';
  const boot = async () => {
    const config = loadConfig({ PORT: port, HOST: '127.0.0.1', GANTRY_LOG_REQUESTS: 'false', GANTRY_SHUTDOWN_GRACE_MS: '1000', ...env });
    return startCoordinator({ config, log: silentLogger, database });
  };
  const first = await boot();
  // Back on the same port under the same name (its default comes from PORT, which was 0).
  port = new URL(first.url).port;
  env = { GANTRY_NAME: first.deps.config.name, ...env };
  const local: LocalCoordinator = {
    coordinator: first,
    url: first.url,
    database,
    admin: new ApiClient({ baseUrl: first.url, token: first.adminKey! }),
    stop: () => local.coordinator.close(),
    async start() {
      local.coordinator = await boot();
    },
    async close() {
      await local.coordinator.close();
      await database.close();
      await drop();
    },
  };
  return local;
}
