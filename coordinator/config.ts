import { existsSync } from 'node:fs';
import { z } from 'zod';

const number = () => z.coerce.number({ error: 'must be a number' });
const port = number().int('must be a whole number').min(0, 'must be a port number, 0-65535').max(65_535, 'must be a port number, 0-65535');
const positiveInt = number().int('must be a whole number').positive('must be 1 or more');
const bool = z
  .enum(['0', '1', 'true', 'false'], { error: 'must be one of 1, 0, true, false' })
  .transform((v) => v === '1' || v === 'true');

/** The shortest lease TTL the coordinator starts with. */
export const minLeaseTtlSeconds = 15;

/** Every setting of the coordinator, from the environment, parsed once at start: the one declaration (its output is Config). */
const Env = z
  .object({
    PORT: port.default(8080),
    HOST: z.string().min(1).default('0.0.0.0'),
    DATABASE_URL: z
      .string()
      .regex(/^postgres(ql)?:\/\//, 'must start with postgres://')
      .optional(),
    GANTRY_DATA_DIR: z.string().min(1).default('./.gantry'),
    GANTRY_DB_POOL_SIZE: positiveInt.max(200).default(10),
    // Heartbeats' own connections, besides the pool: a burst of them never stands between a
    // client's read and a connection (0: they share the pool).
    GANTRY_DB_HEARTBEAT_POOL_SIZE: number().int('must be a whole number').min(0, 'must be 0 or more').max(200).default(5),
    GANTRY_PUBLIC_URL: z.url({ protocol: /^https?$/, error: 'must be an http:// or https:// URL' }).optional(),
    // The coordinator's name: issuer of its leases and audience of agents' tokens.
    GANTRY_NAME: z.string().min(1).max(256).optional(),
    GANTRY_TLS_CERT: z.string().min(1).optional(),
    GANTRY_TLS_KEY: z.string().min(1).optional(),
    GANTRY_BODY_LIMIT_BYTES: positiveInt.default(1024 * 1024),
    GANTRY_LOG_REQUESTS: bool.default(true),
    // Under 15 s a lease could lapse between two renewals of a slow agent (heartbeats every few
    // seconds, a long-poll answered within a third of the TTL).
    GANTRY_LEASE_TTL_SECONDS: positiveInt
      .min(minLeaseTtlSeconds, `must be ${minLeaseTtlSeconds} or more (seconds)`)
      .max(86_400)
      .default(300),
    GANTRY_NODE_TTL_SECONDS: positiveInt.max(86_400).default(30),
    GANTRY_SHUTDOWN_GRACE_MS: positiveInt.default(10_000),
    // Leases: an Ed25519 signing key in this file (made when missing) instead of the signing_keys table.
    GANTRY_SIGNING_KEY_FILE: z.string().min(1).optional(),
    GANTRY_SCHEDULER_BATCH_SIZE: positiveInt.max(10_000).default(1000),
    // The scheduler's backstop tick; submits and freed capacity wake it at once.
    GANTRY_SCHEDULER_TICK_MS: positiveInt.max(600_000).default(5000),
    // GET /v1/pool is computed at most this often (0: on every request).
    GANTRY_POOL_CACHE_MS: z.coerce.number().int().min(0).max(60_000).default(1000),
    GANTRY_POOL_HISTORY_STEP_SECONDS: positiveInt.max(3600).default(60),
    GANTRY_POOL_HISTORY_RETENTION_HOURS: positiveInt.max(24 * 366).default(24 * 7),
    // Job runtime (issue 6): uploads, outputs and logs are capped per item.
    GANTRY_BLOB_MAX_BYTES: positiveInt.default(256 * 1024 * 1024),
    GANTRY_OUTPUTS_MAX_BYTES: positiveInt.default(256 * 1024 * 1024),
    GANTRY_LOG_MAX_BYTES_PER_JOB: positiveInt.default(64 * 1024 * 1024),
    // Log streams (GET /v1/jobs/:id/logs?follow=1) open at once on this coordinator: per key, and in all.
    GANTRY_LOG_STREAMS_PER_KEY: positiveInt.max(100_000).default(100),
    GANTRY_LOG_STREAMS_MAX: positiveInt.max(1_000_000).default(10_000),
    // A log stream ends after this long with a final event; the client reconnects from its last id.
    GANTRY_LOG_STREAM_MAX_SECONDS: positiveInt.max(86_400).default(3600),
    // Service jobs (spec.service): each on its own origin, {job} standing for the job id; default
    // http://{job}.localhost:<port> on this listener (names under .localhost resolve to loopback).
    GANTRY_SERVICES_URL: z
      .string()
      .regex(/^https?:\/\/\{job\}\.[A-Za-z0-9.-]+(:\d{1,5})?\/?$/, 'must read like https://{job}.svc.example.com')
      .optional(),
    // A request body sent to a service is cut past this (413); an exchange with no bytes either way
    // for this long is ended (a stream that flows is never cut).
    GANTRY_SERVICE_BODY_LIMIT_BYTES: positiveInt.default(64 * 1024 * 1024),
    GANTRY_SERVICE_IDLE_TIMEOUT_SECONDS: positiveInt.max(86_400).default(300),
    // This replica's address as the other replicas reach it (they forward service requests for the
    // agents whose tunnel it holds); unset: a single replica, nothing forwarded.
    GANTRY_INTERNAL_URL: z.url({ protocol: /^https?$/, error: 'must be an http:// or https:// URL' }).optional(),
    // Money: how often a lease posts what it used and holds the next period (default half a lease
    // TTL), and the platform's fee as a percentage of what providers earn.
    GANTRY_BILLING_PERIOD_SECONDS: positiveInt.max(86_400).optional(),
    GANTRY_FEE_PERCENT: z.coerce
      .number({ error: 'must be a number' })
      .min(0, 'must be 0-100')
      .max(100, 'must be 0-100')
      .refine((v) => Number.isInteger(Math.round(v * 100)) && Math.abs(v * 100 - Math.round(v * 100)) < 1e-9, 'at most 2 decimals')
      .default(0),
  })
  .refine((e) => e.GANTRY_BILLING_PERIOD_SECONDS === undefined || e.GANTRY_BILLING_PERIOD_SECONDS <= e.GANTRY_LEASE_TTL_SECONDS, {
    message: 'must not be longer than GANTRY_LEASE_TTL_SECONDS (a lease never runs past what is held)',
    path: ['GANTRY_BILLING_PERIOD_SECONDS'],
  })
  .refine((e) => Boolean(e.GANTRY_TLS_CERT) === Boolean(e.GANTRY_TLS_KEY), {
    message: 'GANTRY_TLS_CERT and GANTRY_TLS_KEY go together: set both or neither',
    path: ['GANTRY_TLS_CERT'],
  })
  // The settings as the code reads them: this mapping is the Config type, nothing else lists them.
  .transform((e) => {
    const scheme = e.GANTRY_TLS_CERT ? 'https' : 'http';
    const publicUrl = (e.GANTRY_PUBLIC_URL ?? `${scheme}://localhost:${e.PORT}`).replace(/\/+$/, '');
    return {
      port: e.PORT,
      host: e.HOST,
      databaseUrl: e.DATABASE_URL,
      dataDir: e.GANTRY_DATA_DIR,
      dbPoolSize: e.GANTRY_DB_POOL_SIZE,
      dbHeartbeatPoolSize: e.GANTRY_DB_HEARTBEAT_POOL_SIZE,
      publicUrl,
      name: e.GANTRY_NAME ?? publicUrl,
      tls: e.GANTRY_TLS_CERT && e.GANTRY_TLS_KEY ? { certFile: e.GANTRY_TLS_CERT, keyFile: e.GANTRY_TLS_KEY } : null,
      bodyLimitBytes: e.GANTRY_BODY_LIMIT_BYTES,
      logRequests: e.GANTRY_LOG_REQUESTS,
      leaseTtlSeconds: e.GANTRY_LEASE_TTL_SECONDS,
      nodeTtlSeconds: e.GANTRY_NODE_TTL_SECONDS,
      shutdownGraceMs: e.GANTRY_SHUTDOWN_GRACE_MS,
      signingKeyFile: e.GANTRY_SIGNING_KEY_FILE ?? null,
      schedulerBatchSize: e.GANTRY_SCHEDULER_BATCH_SIZE,
      schedulerTickMs: e.GANTRY_SCHEDULER_TICK_MS,
      poolCacheMs: e.GANTRY_POOL_CACHE_MS,
      poolHistoryStepSeconds: e.GANTRY_POOL_HISTORY_STEP_SECONDS,
      poolHistoryRetentionSeconds: e.GANTRY_POOL_HISTORY_RETENTION_HOURS * 3600,
      blobMaxBytes: e.GANTRY_BLOB_MAX_BYTES,
      outputsMaxBytes: e.GANTRY_OUTPUTS_MAX_BYTES,
      logMaxBytesPerJob: e.GANTRY_LOG_MAX_BYTES_PER_JOB,
      logStreamsPerKey: e.GANTRY_LOG_STREAMS_PER_KEY,
      logStreamsMax: e.GANTRY_LOG_STREAMS_MAX,
      logStreamMaxSeconds: e.GANTRY_LOG_STREAM_MAX_SECONDS,
      servicesUrl: e.GANTRY_SERVICES_URL?.replace(/\/+$/, '') ?? null,
      serviceBodyLimitBytes: e.GANTRY_SERVICE_BODY_LIMIT_BYTES,
      serviceIdleTimeoutMs: e.GANTRY_SERVICE_IDLE_TIMEOUT_SECONDS * 1000,
      internalUrl: e.GANTRY_INTERNAL_URL?.replace(/\/+$/, '') ?? null,
      billing: {
        periodSeconds: e.GANTRY_BILLING_PERIOD_SECONDS ?? Math.max(1, Math.floor(e.GANTRY_LEASE_TTL_SECONDS / 2)),
        feeBasisPoints: Math.round(e.GANTRY_FEE_PERCENT * 100),
      },
    };
  });

export type Config = z.output<typeof Env>;

export class ConfigError extends Error {}

/** NAME=value for the error line; a value that may hold a password is left out. */
function shown(name: string, value: string | undefined): string {
  if (value === undefined || /URL$|KEY$|SECRET|TOKEN|PASSWORD/.test(name)) return name;
  return `${name}=${JSON.stringify(value.length > 80 ? `${value.slice(0, 80)}…` : value)}`;
}

export function loadConfig(env: Record<string, string | undefined> = process.env): Config {
  // An empty variable counts as unset, as a shell user expects.
  const present = Object.fromEntries(Object.entries(env).filter(([, v]) => v !== undefined && v !== ''));
  const parsed = Env.safeParse(present);
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!;
    const name = String(issue.path[0] ?? 'environment');
    throw new ConfigError(`invalid setting ${shown(name, present[name])}: ${issue.message}`);
  }
  const { tls } = parsed.data;
  for (const [name, file] of [['GANTRY_TLS_CERT', tls?.certFile], ['GANTRY_TLS_KEY', tls?.keyFile]] as const) {
    if (file && !existsSync(file)) throw new ConfigError(`invalid setting ${shown(name, file)}: no such file`);
  }
  return parsed.data;
}
