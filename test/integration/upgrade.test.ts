import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import postgres from 'postgres';
import { afterEach, describe, expect, it } from 'vitest';
import { sql } from 'drizzle-orm';
import { loadConfig } from '../../coordinator/config.ts';
import { migrate as migratePglite } from 'drizzle-orm/pglite/migrator';
import { migrate as migratePostgres } from 'drizzle-orm/postgres-js/migrator';
import { migrationsFolder } from '../../coordinator/db/migrate.ts';
import { openDatabase, type Database } from '../../coordinator/db/open.ts';
import { silentLogger } from '../../coordinator/log.ts';
import { startCoordinator } from '../../coordinator/server.ts';
import { newId, randomLowercase } from '../../shared/ids.ts';
import { spawnCoordinator } from '../support/coordinator-process.ts';
import { dbKind, dbSkipReason, postgresAdminUrl } from '../support/database.ts';

// The migrations earlier releases shipped, copied from git (test/fixtures/migrations/SOURCES.md).
const releaseMigrations = (commit: string) => fileURLToPath(new URL(`../fixtures/migrations/${commit}`, import.meta.url));

interface OldDatabase {
  database: Database;
  /** What a coordinator process is started with to open this database. */
  env: Record<string, string>;
  /** Closes our handle, so that a coordinator process may open it (PGlite's data dir is one process's). */
  release(): Promise<void>;
  drop(): Promise<void>;
}

const cleanups: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup().catch(() => {});
});

/** A database exactly as the build at `commit` left it: its migrations applied, nothing else. */
/** The old database, closed at most once, and dropped with its store (removeStore) after that. */
function oldDatabase(database: Database, env: Record<string, string>, removeStore: () => Promise<void> | void): OldDatabase {
  let open = true;
  const release = async () => {
    if (open) await database.close();
    open = false;
  };
  return {
    database,
    env,
    release,
    async drop() {
      await release();
      await removeStore();
    },
  };
}

async function databaseOfRelease(commit: string): Promise<OldDatabase> {
  let old: OldDatabase;
  if (dbKind === 'pglite') {
    const dataDir = mkdtempSync(join(tmpdir(), 'gantry-upgrade-'));
    old = oldDatabase(await openDatabase({ dataDir }), { GANTRY_DATA_DIR: dataDir }, () => rmSync(dataDir, { recursive: true, force: true }));
  } else {
    const name = `gantry_upgrade_${randomBytes(6).toString('hex')}`;
    const admin = postgres(postgresAdminUrl, { max: 1, onnotice: () => {} });
    await admin.unsafe(`create database ${name}`);
    const url = postgresAdminUrl.replace(/\/[^/]*$/, `/${name}`);
    old = oldDatabase(await openDatabase({ databaseUrl: url, poolSize: 4 }), { DATABASE_URL: url }, async () => {
      await admin.unsafe(`drop database if exists ${name} with (force)`);
      await admin.end({ timeout: 5 });
    });
  }
  cleanups.push(() => old.drop());
  // drizzle's own migrator, as that release ran it (not ours, which is under test).
  const migrationsFolder = releaseMigrations(commit);
  if (dbKind === 'pglite') await migratePglite(old.database.db as never, { migrationsFolder });
  else await migratePostgres(old.database.db as never, { migrationsFolder });
  return old;
}

const sha256 = (s: string) => createHash('sha256').update(s).digest('hex');

/** An API key row as c4bc535 wrote it (gk_<prefix>_<secret>, the secret's sha256 kept). */
async function writeKey(database: Database, accountId: string, scopes: string[]): Promise<string> {
  const prefix = randomLowercase(12);
  const secret = randomBytes(32).toString('base64url');
  await database.rows(sql`insert into api_keys (id, account_id, prefix, hash, scopes)
    values (${newId('apiKey')}, ${accountId}, ${prefix}, ${sha256(secret)}, ${JSON.stringify(scopes)}::jsonb)`);
  return `gk_${prefix}_${secret}`;
}

const spec = (name: string, gpus: number) => ({
  name,
  image: 'busybox:1.36',
  command: ['echo', name],
  resources: { cpu: 1, memoryMb: 512, gpus },
  timeoutSeconds: 3600,
  maxAttempts: 3,
  priority: 0,
  network: 'bridge',
});

/** Accounts, keys, a node with a GPU, a finished job and a waiting one, in c4bc535's columns. */
async function writeReleaseData(database: Database) {
  const client = newId('account');
  const provider = newId('account');
  await database.rows(sql`insert into accounts (id, name, kind) values (${client}, 'upgrade-client', 'client'), (${provider}, 'upgrade-provider', 'provider')`);
  const clientKey = await writeKey(database, client, ['client']);
  const providerKey = await writeKey(database, provider, ['provider']);
  const node = newId('node');
  await database.rows(sql`insert into nodes (id, account_id, name, status, labels, region, public_key, agent_version,
      cpu_millis, memory_mb, disk_mb, price_gpu_hour_micros, price_cpu_hour_micros, last_heartbeat_at, jobs_succeeded)
    values (${node}, ${provider}, 'rig-from-c4bc535', 'offline', '{"zone":"a"}'::jsonb, 'eu-west', '{"kty":"OKP","crv":"Ed25519","x":"AAAA"}'::jsonb,
      '0.1.0', 8000, 32768, 100000, 600000, 10000, now() - interval '1 hour', 1)`);
  await database.rows(sql`insert into gpus (node_id, id, index, uuid, model, memory_mb, driver_version, cuda_version, pci_bus_id)
    values (${node}, 'GPU-8f6c1d2e-0000-4000-8000-000000000001', 0, 'GPU-8f6c1d2e-0000-4000-8000-000000000001',
      'NVIDIA GeForce RTX 4090', 24564, '550.54.14', '12.4', '00000000:01:00.0')`);
  const finished = newId('job');
  const waiting = newId('job');
  const finishedSpec = spec('finished-before-upgrade', 1);
  const waitingSpec = spec('waiting-before-upgrade', 8);
  await database.rows(sql`insert into jobs (id, account_id, name, spec, spec_digest, status, cpu_millis, memory_mb, gpu_count,
      attempts, max_attempts, node_id, gpu_ids, lease_epoch, price_gpu_hour_micros, price_cpu_hour_micros,
      leased_at, started_at, finished_at, exit_code)
    values (${finished}, ${client}, ${finishedSpec.name}, ${JSON.stringify(finishedSpec)}::jsonb, ${sha256(JSON.stringify(finishedSpec))},
      'succeeded', 1000, 512, 1, 1, 3, ${node}, '["GPU-8f6c1d2e-0000-4000-8000-000000000001"]'::jsonb, 1, 600000, 10000,
      now() - interval '50 minutes', now() - interval '49 minutes', now() - interval '40 minutes', 0)`);
  await database.rows(sql`insert into jobs (id, account_id, name, spec, spec_digest, status, cpu_millis, memory_mb, gpu_count,
      attempts, max_attempts, pending_reason)
    values (${waiting}, ${client}, ${waitingSpec.name}, ${JSON.stringify(waitingSpec)}::jsonb, ${sha256(JSON.stringify(waitingSpec))},
      'queued', 1000, 512, 8, 0, 3, 'no node has 8 free GPUs')`);
  return { clientKey, providerKey, node, finished, waiting };
}

const config = () => loadConfig({ PORT: '0', HOST: '127.0.0.1', GANTRY_LOG_REQUESTS: 'false', GANTRY_SHUTDOWN_GRACE_MS: '1000' });

async function get(url: string, key: string): Promise<{ status: number; body: any }> {
  const res = await fetch(url, { headers: { authorization: `Bearer ${key}` } });
  return { status: res.status, body: await res.json() };
}

describe.skipIf(dbSkipReason)('upgrading a database made by an earlier release', () => {
  it('the first migration is frozen as it stood at c4bc535', () => {
    // Editing a landed migration makes every database made before it fail to start (PITFALLS.md).
    expect(readFileSync(join(migrationsFolder, '0000_init.sql'), 'utf8')).toBe(
      readFileSync(join(releaseMigrations('c4bc535'), '0000_init.sql'), 'utf8'),
    );
  });

  it("today's coordinator starts on a c4bc535 database and serves its accounts, keys, nodes and jobs", async () => {
    const old = await databaseOfRelease('c4bc535');
    const data = await writeReleaseData(old.database);
    const coordinator = await startCoordinator({ config: config(), log: silentLogger, database: old.database });
    try {
      const node = await get(`${coordinator.url}/v1/nodes/${data.node}`, data.providerKey);
      expect(node.status).toBe(200);
      expect(node.body).toMatchObject({
        id: data.node,
        name: 'rig-from-c4bc535',
        status: 'offline',
        labels: { zone: 'a' },
        region: 'eu-west',
        priceGpuHour: 0.6,
        capacity: { cpu: 8, memoryMb: 32768, diskMb: 100000 },
      });
      expect(node.body.gpus).toEqual([
        expect.objectContaining({ uuid: 'GPU-8f6c1d2e-0000-4000-8000-000000000001', model: 'NVIDIA GeForce RTX 4090', pciBusId: '00000000:01:00.0' }),
      ]);

      const finished = await get(`${coordinator.url}/v1/jobs/${data.finished}`, data.clientKey);
      expect(finished.status).toBe(200);
      expect(finished.body).toMatchObject({ id: data.finished, status: 'succeeded', exitCode: 0, nodeId: data.node, spec: { name: 'finished-before-upgrade' } });
      const waiting = await get(`${coordinator.url}/v1/jobs/${data.waiting}`, data.clientKey);
      expect(waiting.body).toMatchObject({ id: data.waiting, status: 'queued', spec: { resources: { gpus: 8 } } });
      const list = await get(`${coordinator.url}/v1/jobs`, data.clientKey);
      expect(list.body.items.map((j: { id: string }) => j.id).sort()).toEqual([data.finished, data.waiting].sort());
    } finally {
      await coordinator.close();
    }
  });

  it('a database whose applied first migration differs from migrations/ is refused with one line and exit 1', async () => {
    // ab31144 shipped another 0000_init.sql (older journal time): drizzle would run today's again and fail on CREATE TABLE.
    const old = await databaseOfRelease('ab31144');
    await old.release();
    const coordinator = spawnCoordinator({ ...old.env, PORT: '0', HOST: '127.0.0.1' });
    cleanups.push(() => coordinator.stop());
    const { code } = await coordinator.exited;
    expect(code).toBe(1);
    const lines = coordinator.stderr.filter((l) => l.trim() !== '');
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(/^gantry-coordinator: database schema does not match this release: .*migration/);
    expect(lines[0]).not.toMatch(/CREATE TABLE|already exists|\n\s+at /);
  });
});
