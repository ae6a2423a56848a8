import { readFileSync } from 'node:fs';
import { createServer as createHttpServer, type Server } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import type { AddressInfo } from 'node:net';
import { bootstrapAdmin } from './accounts/bootstrap.ts';
import { createHandlers } from './app.ts';
import { DatabaseBlobStore } from './blobs/db-store.ts';
import { KeyVerifier } from './auth/api-keys.ts';
import { systemClock, type Clock } from './clock.ts';
import type { Config } from './config.ts';
import { DatabaseAvailability } from './db/availability.ts';
import { migrate } from './db/migrate.ts';
import { openDatabase, type Database } from './db/open.ts';
import type { AppDeps } from './deps.ts';
import type { Logger } from './log.ts';
import { AgentVerifier, nodeRetiredChannel } from './nodes/agent-auth.ts';
import { startNodeSweeper } from './nodes/sweeper.ts';
import { LogFollowers } from './logs/followers.ts';
import { Signals, topics } from './signals.ts';
import { createLeaseSide } from './leases/start.ts';
import { Metrics } from './metrics/registry.ts';
import { PoolHistoryWriter } from './pool/history.ts';
import { PoolStats } from './pool/stats.ts';
import type { SchedulerLoop } from './scheduler/loop.ts';
import { ServiceSide } from './services/side.ts';

export interface Coordinator {
  url: string;
  deps: AppDeps;
  /** The admin key, when this start created the admin account; null otherwise. */
  adminKey: string | null;
  close(): Promise<void>;
}

export interface StartOptions {
  config: Config;
  log: Logger;
  clock?: Clock;
  /** An opened database to use (tests); otherwise opened from config. */
  database?: Database;
}

/** Opens the database, migrates, bootstraps, and serves: what `npm start` and the tests both run. */
export async function startCoordinator(opts: StartOptions): Promise<Coordinator> {
  const { config, log } = opts;
  const clock = opts.clock ?? systemClock;
  const database =
    opts.database ??
    (await openDatabase({
      databaseUrl: config.databaseUrl,
      dataDir: config.dataDir,
      poolSize: config.dbPoolSize,
      heartbeatPoolSize: config.dbHeartbeatPoolSize,
    }));
  const ownsDatabase = !opts.database;
  try {
    await migrate(database);
    const adminKey = await bootstrapAdmin(database);
    const signals = new Signals();
    const availability = new DatabaseAvailability(database, clock, log);
    const leaseSide = await createLeaseSide({ database, availability, clock, config, log, signals });
    const keys = new KeyVerifier(database, clock);
    // Agents' keys are read beside their heartbeats: a burst of nodes coming back waits there too.
    const agents = new AgentVerifier(database.heartbeats, clock, config.name);
    const parts = poolParts(database, clock, config, leaseSide.scheduler, signals);
    const services = new ServiceSide({ config, database, clock, log, agents, signingKeys: leaseSide.leases.keys });
    const deps: AppDeps = {
      config,
      database,
      availability,
      clock,
      log,
      signals,
      keys,
      agents,
      blobs: new DatabaseBlobStore(database),
      heartbeatHook: leaseSide.leases,
      leases: leaseSide.leases,
      scheduler: leaseSide.scheduler,
      ...parts,
      services,
      logFollowers: new LogFollowers(
        database,
        signals,
        { perKey: config.logStreamsPerKey, total: config.logStreamsMax, maxLifeMs: config.logStreamMaxSeconds * 1000 },
        keys,
      ),
    };
    const stopKeyListener = await deps.keys.listenForRevocations();
    const stopRetiredListener = await database.listen(nodeRetiredChannel, (nodeId) => {
      deps.agents.forgetNode(nodeId);
      services.tunnels.drop(nodeId);
    });
    const stopServiceTokenListener = await services.start();
    const handlers = createHandlers(deps);
    const server: Server = config.tls
      ? createHttpsServer({ cert: readFileSync(config.tls.certFile), key: readFileSync(config.tls.keyFile) }, handlers.request)
      : createHttpServer(handlers.request);
    server.on('upgrade', handlers.upgrade);
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(config.port, config.host, () => {
        server.off('error', reject);
        resolve();
      });
    });
    const { port } = server.address() as AddressInfo;
    const scheme = config.tls ? 'https' : 'http';
    services.listening(scheme, port);
    // The address it is reachable on from this host (a wildcard bind answers on loopback).
    const host = ['0.0.0.0', '::', ''].includes(config.host) ? '127.0.0.1' : config.host;
    const url = `${scheme}://${host.includes(':') ? `[${host}]` : host}:${port}`;
    const poolHistory = new PoolHistoryWriter(database, clock, deps.pool, {
      stepSeconds: config.poolHistoryStepSeconds,
      retentionSeconds: config.poolHistoryRetentionSeconds,
    }, log);
    poolHistory.start();
    availability.start();
    await leaseSide.start();
    const nodeSweeper = startNodeSweeper(deps);
    let closing: Promise<void> | null = null;
    return {
      url,
      deps,
      adminKey,
      close: () =>
        (closing ??= (async () => {
          // The scheduler and sweeper stop first; waiting long-polls answer at once, log streams end.
          await leaseSide.stop();
          await deps.logFollowers.stop();
          handlers.close();
          services.stop();
          // Stop accepting, let in-flight requests finish (bounded), then close the database.
          await new Promise<void>((resolve) => {
            const http = server as { closeIdleConnections?: () => void; closeAllConnections?: () => void };
            // A keep-alive connection whose request just finished is closed now, not at its idle timeout.
            const idle = setInterval(() => http.closeIdleConnections?.(), 50);
            const timer = setTimeout(() => {
              http.closeAllConnections?.();
              clearInterval(idle);
              resolve();
            }, config.shutdownGraceMs);
            server.close(() => {
              clearTimeout(timer);
              clearInterval(idle);
              resolve();
            });
            http.closeIdleConnections?.();
          });
          await stopKeyListener().catch(() => {});
          await stopRetiredListener().catch(() => {});
          await stopServiceTokenListener().catch(() => {});
          await nodeSweeper.stop();
          await poolHistory.stop();
          await availability.stop();
          if (ownsDatabase) await database.close();
        })()),
    };
  } catch (err) {
    if (ownsDatabase) await database.close().catch(() => {});
    throw err;
  }
}

/** The pool's figures and the metrics that read them. */
function poolParts(
  database: Database,
  clock: Clock,
  config: Config,
  scheduler: SchedulerLoop,
  signals: Signals,
): { pool: PoolStats; metrics: Metrics } {
  const pool = new PoolStats(database, clock, config.poolCacheMs);
  // A node that joined or freed capacity here shows in the next read (other replicas: within the cache age).
  signals.on(topics.nodeChanged, () => pool.invalidate());
  return { pool, metrics: new Metrics({ pool, database, clock, scheduler }) };
}
