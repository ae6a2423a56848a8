import { issueAdminKey } from './accounts/bootstrap.ts';
import { keyRevokedChannel } from './auth/api-keys.ts';
import { ConfigError, loadConfig } from './config.ts';
import { DataDirLockedError } from './db/data-dir-lock.ts';
import { MigrationMismatchError, migrate } from './db/migrate.ts';
import { openDatabase } from './db/open.ts';
import { jsonLogger } from './log.ts';
import { startCoordinator } from './server.ts';

const usage = `usage: gantry-coordinator [serve]        run the coordinator (what npm start does)
       gantry-coordinator admin-key [--revoke-old]
                                         print a new admin API key (recovery; on PGlite stop the
                                         coordinator first); --revoke-old revokes the admin's other keys`;

function fail(message: string): never {
  process.stderr.write(`gantry-coordinator: ${message}\n`);
  process.exit(1);
}

function describe(err: unknown): string {
  if (err instanceof ConfigError || err instanceof DataDirLockedError || err instanceof MigrationMismatchError) return err.message;
  const e = err as NodeJS.ErrnoException;
  if (e?.code === 'EADDRINUSE') return `port already in use (${e.message}); set PORT to another one`;
  if (e?.code === 'ECONNREFUSED') return `cannot reach the database: ${e.message}`;
  return `failed to start: ${e?.message ?? String(err)}`;
}

async function serveCommand() {
  const config = loadConfig();
  const log = jsonLogger();
  const coordinator = await startCoordinator({ config, log });
  const where = config.databaseUrl ? 'PostgreSQL' : `PGlite in ${config.dataDir}`;
  // The bound address (PORT=0 picks a free port), so scripts and tests can read it from this line.
  let banner = `Gantry coordinator listening on ${coordinator.url} (public URL ${config.publicUrl}; database: ${where})\n`;
  if (coordinator.adminKey) {
    banner +=
      `Admin API key: ${coordinator.adminKey}\n` +
      'Keep it safe: it is shown only this once. Send it as "Authorization: Bearer <key>", e.g. export GANTRY_ADMIN_KEY=<key>\n';
  }
  // One write, so a reader sees the key line together with the listening line.
  process.stdout.write(banner);
  let stopping = false;
  const stop = (signal: string) => {
    if (stopping) return;
    stopping = true;
    log.info('shutting down', { signal });
    coordinator.close().then(
      () => process.exit(0),
      (err) => fail(`shutdown failed: ${String(err)}`),
    );
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
}

async function adminKeyCommand(args: string[]) {
  const unknown = args.filter((a) => a !== '--revoke-old');
  if (unknown.length) fail(`unknown option "${unknown[0]}" for admin-key\n${usage}`);
  const config = loadConfig();
  const database = await openDatabase({ databaseUrl: config.databaseUrl, dataDir: config.dataDir, poolSize: 2 });
  try {
    await migrate(database);
    const { key, revokedKeyIds } = await issueAdminKey(database, { revokeOthers: args.includes('--revoke-old') });
    // Running replicas drop the revoked keys from their caches at once.
    for (const id of revokedKeyIds) await database.notify(keyRevokedChannel, id);
    process.stdout.write(`Admin API key: ${key}\n`);
    if (revokedKeyIds.length) process.stderr.write(`revoked ${revokedKeyIds.length} older admin key(s)\n`);
  } finally {
    await database.close();
  }
}

const [command = 'serve', ...args] = process.argv.slice(2);
const run = command === 'serve' ? serveCommand : command === 'admin-key' ? () => adminKeyCommand(args) : null;
if (!run) fail(`unknown command "${command}"\n${usage}`);
run().catch((err) => fail(describe(err)));
