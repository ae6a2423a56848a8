import { mkdirSync } from 'node:fs';
import { PGlite } from '@electric-sql/pglite';
import type { PgDatabase, PgQueryResultHKT } from 'drizzle-orm/pg-core';
import { drizzle as drizzlePglite } from 'drizzle-orm/pglite';
import { drizzle as drizzlePostgres } from 'drizzle-orm/postgres-js';
import type { SQL } from 'drizzle-orm';
import type postgres from 'postgres';
import * as schema from './schema/index.ts';
import { lockDataDir } from './data-dir-lock.ts';
import { postgres as guardedPostgres } from './postgres-driver.ts';

export type Schema = typeof schema;
/** The drizzle database both drivers give; code above db/ sees only this. */
export type Db = PgDatabase<PgQueryResultHKT, Schema>;
export type Tx = Parameters<Parameters<Db['transaction']>[0]>[0];
export type DbOrTx = Db | Tx;

export interface Database {
  db: Db;
  /**
   * What node heartbeats run on: on PostgreSQL a pool of their own (heartbeatPoolSize), so that a
   * burst of them queues for those connections and never in front of a client's read, a submit
   * or a placement. On PGlite, and with heartbeatPoolSize 0, the same as db.
   */
  heartbeats: Db;
  driver: 'pglite' | 'postgres';
  /** Rows of a raw query, whichever driver ran it (postgres.js: an array; PGlite: { rows }). */
  rows<T = Record<string, unknown>>(query: SQL): Promise<T[]>;
  /** Runs fn while this process holds a PostgreSQL session advisory lock (PGlite: one process, no lock). */
  withAdvisoryLock<T>(key: number, fn: () => Promise<T>): Promise<T>;
  /** Subscribes to NOTIFY on a channel; the returned function unsubscribes. */
  listen(channel: string, onPayload: (payload: string) => void): Promise<() => Promise<void>>;
  notify(channel: string, payload: string): Promise<void>;
  /** A raw postgres.js client for what needs a connection of its own (PostgreSQL only). */
  raw: postgres.Sql | null;
  /**
   * A client of its own with one connection (PostgreSQL only), for what must stay on one session:
   * a session advisory lock. Unlike a connection reserved from a pool, it reconnects by itself after
   * the session dies, as a new session (the caller checks that its lock is still held).
   */
  session: (() => postgres.Sql) | null;
  /** Statements sent through db since the start: what a test counts to prove something costs no query. */
  readonly queries: number;
  close(): Promise<void>;
}

export interface OpenOptions {
  /** postgres://… for PostgreSQL; otherwise PGlite in dataDir. */
  databaseUrl?: string | undefined;
  /** A PGlite data dir, or memory:// for a throwaway database. */
  dataDir?: string;
  poolSize?: number;
  /** PostgreSQL: connections of the heartbeats' own pool, besides poolSize (0: they share db's). */
  heartbeatPoolSize?: number;
  /** PGlite only: a dump from dumpDataDir() to start from (tests use it to skip migrations). */
  loadDataDir?: Blob | File;
}

/** Normalizes a count(*) or bigint that postgres.js gives as a string and PGlite as a number or BigInt. */
export function toNumber(v: unknown): number {
  if (typeof v === 'number') return v;
  if (typeof v === 'bigint' || typeof v === 'string') return Number(v);
  return 0;
}

/** drizzle's query logger, used as a counter: one increment per statement. */
function queryCounter() {
  const counter = {
    n: 0,
    logQuery() {
      counter.n++;
    },
  };
  return counter;
}

export async function openDatabase(opts: OpenOptions): Promise<Database> {
  return opts.databaseUrl ? openPostgres(opts.databaseUrl, opts.poolSize ?? 10, opts.heartbeatPoolSize ?? 0) : openPglite(opts);
}

async function openPglite(opts: OpenOptions): Promise<Database> {
  const dataDir = opts.dataDir ?? './.gantry';
  const inMemory = dataDir.startsWith('memory://');
  let unlock = () => {};
  if (!inMemory) {
    mkdirSync(dataDir, { recursive: true });
    unlock = await lockDataDir(dataDir);
  }
  let client: PGlite;
  try {
    client = await PGlite.create(inMemory ? dataDir : dataDir, opts.loadDataDir ? { loadDataDir: opts.loadDataDir } : {});
  } catch (err) {
    unlock();
    throw err;
  }
  const counter = queryCounter();
  const db = drizzlePglite({ client, schema, logger: counter }) as unknown as Db;
  return {
    db,
    heartbeats: db,
    driver: 'pglite',
    raw: null,
    session: null,
    get queries() {
      return counter.n;
    },
    async rows<T>(query: SQL) {
      const result = (await db.execute(query)) as unknown as { rows: T[] };
      return result.rows;
    },
    // PGlite is one session in one process (its data dir is locked): nothing to exclude.
    withAdvisoryLock: (_key, fn) => fn(),
    async listen(channel, onPayload) {
      const off = await client.listen(channel, onPayload);
      return async () => off();
    },
    async notify(channel, payload) {
      await client.query('select pg_notify($1, $2)', [channel, payload]);
    },
    async close() {
      try {
        await client.close();
      } finally {
        unlock();
      }
    },
  };
}

/**
 * The wait before a connection that failed tries again. The driver's own grows to 10-20 s after a
 * few failures (and its failure count is shared by the pool), so a database back after a long
 * outage would be seen only that late: capped at a second here.
 */
export function reconnectBackoffSeconds(failures: number): number {
  return Math.min(1, 0.05 * 2 ** failures) * (0.5 + Math.random() / 2);
}

async function openPostgres(url: string, poolSize: number, heartbeatPoolSize: number): Promise<Database> {
  const options = { max: poolSize, onnotice: () => {}, connection: { application_name: 'gantry' }, backoff: reconnectBackoffSeconds };
  const client = guardedPostgres(url, options);
  // drizzle() changes the client it wraps (PITFALLS.md): raw work gets a client of its own.
  const raw = guardedPostgres(url, { ...options, max: 4 });
  const counter = queryCounter();
  const db = drizzlePostgres({ client, schema, logger: counter }) as unknown as Db;
  // postgres.js opens a connection only when a query needs one: an idle lane costs nothing.
  const heartbeatClient = heartbeatPoolSize > 0 ? guardedPostgres(url, { ...options, max: heartbeatPoolSize }) : null;
  const heartbeats = heartbeatClient ? (drizzlePostgres({ client: heartbeatClient, schema, logger: counter }) as unknown as Db) : db;
  await raw`select 1`;
  return {
    db,
    heartbeats,
    driver: 'postgres',
    raw,
    // No lifetime limit: ending the connection would drop the session's lock.
    session: () => guardedPostgres(url, { ...options, max: 1, connect_timeout: 5, max_lifetime: null }),
    get queries() {
      return counter.n;
    },
    async rows<T>(query: SQL) {
      return [...((await db.execute(query)) as unknown as T[])];
    },
    async withAdvisoryLock(key, fn) {
      // A session lock must be taken and released on one connection: reserve it.
      const conn = await raw.reserve();
      try {
        await conn`select pg_advisory_lock(${key})`;
        try {
          return await fn();
        } finally {
          await conn`select pg_advisory_unlock(${key})`;
        }
      } finally {
        conn.release();
      }
    },
    async listen(channel, onPayload) {
      const sub = await raw.listen(channel, onPayload);
      return () => sub.unlisten();
    },
    async notify(channel, payload) {
      await raw.notify(channel, payload);
    },
    async close() {
      await Promise.all([client.end({ timeout: 5 }), raw.end({ timeout: 5 }), heartbeatClient?.end({ timeout: 5 })]);
    },
  };
}
