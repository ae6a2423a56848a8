import { sql } from 'drizzle-orm';
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { Clock } from '../clock.ts';
import { toNumber, type Database } from '../db/open.ts';
import type { PoolStats } from '../pool/stats.ts';

/**
 * The coordinator's Prometheus metrics, one registry per app (tests run several in one
 * process). Pool gauges are read from the pool figures at scrape time; counters of events in
 * this process (placements, HTTP requests) are counted where they happen.
 */
export class Metrics {
  readonly registry = new Registry();
  /** Every answered HTTP request, by route pattern (bounded), method and status. */
  readonly httpDuration: Histogram<'method' | 'route' | 'status'>;
  /** Service jobs' requests through this coordinator, by job and status class (2xx..5xx). */
  readonly serviceRequests: Counter<'job' | 'status'>;
  /** Bytes through service jobs' exchanges, by job and direction (in: to the job, out: to the client). */
  readonly serviceBytes: Counter<'job' | 'direction'>;
  /** Time from a service request's arrival to its answer's headers, by job. */
  readonly serviceLatency: Histogram<'job'>;
  constructor(source: {
    pool: PoolStats;
    database: Database;
    clock: Clock;
    /** This process's scheduler loop and what it has done (counted where it happens). */
    scheduler?: { totals: { passes: number; placed: number; conflicts: number; errors: number } };
  }) {
    const r = this.registry;
    collectDefaultMetrics({ register: r, prefix: 'gantry_process_' });

    this.httpDuration = new Histogram({
      name: 'gantry_http_request_duration_seconds',
      help: 'HTTP request durations by route pattern, method and status',
      labelNames: ['method', 'route', 'status'],
      buckets: [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
      registers: [r],
    });
    this.serviceRequests = new Counter({
      name: 'gantry_service_requests_total',
      help: 'Requests to service jobs through this coordinator, by job and status class',
      labelNames: ['job', 'status'],
      registers: [r],
    });
    this.serviceBytes = new Counter({
      name: 'gantry_service_bytes_total',
      help: 'Bytes through service jobs, by job and direction (in: to the job, out: to the client)',
      labelNames: ['job', 'direction'],
      registers: [r],
    });
    this.serviceLatency = new Histogram({
      name: 'gantry_service_response_seconds',
      help: "Time to a service job's answer headers through this coordinator, by job",
      labelNames: ['job'],
      buckets: [0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
      registers: [r],
    });
    const schedulerCounter = (name: string, help: string, key: 'passes' | 'placed' | 'conflicts' | 'errors') =>
      new Counter({
        name,
        help,
        registers: [r],
        collect() {
          this.reset();
          this.inc(source.scheduler?.totals[key] ?? 0);
        },
      });
    schedulerCounter('gantry_placements_total', 'Jobs placed on nodes by this coordinator’s scheduler', 'placed');
    schedulerCounter('gantry_scheduler_passes_total', 'Scheduler passes run by this coordinator', 'passes');
    schedulerCounter('gantry_scheduler_conflicts_total', 'Placement batches that found the plan stale and were retried', 'conflicts');
    schedulerCounter('gantry_scheduler_errors_total', 'Scheduler passes that failed', 'errors');

    // Pool figures: the gauges of one scrape share one computation (PoolStats caches and single-flights).
    const pool = () => source.pool.get();

    new Gauge({
      name: 'gantry_pool_gpus',
      help: 'GPUs (kind="gpu") and MIG devices (kind="mig") in the pool by model and state',
      labelNames: ['model', 'kind', 'state'],
      registers: [r],
      async collect() {
        const p = await pool();
        this.reset();
        for (const m of p.models) {
          for (const state of ['free', 'busy', 'draining', 'offline'] as const) {
            this.set({ model: m.model, kind: m.kind, state }, m[state]);
          }
        }
      },
    });
    new Gauge({
      name: 'gantry_pool_gpu_price_per_hour',
      help: 'Price per GPU-hour among free GPUs of a model (min, median, max)',
      labelNames: ['model', 'kind', 'stat'],
      registers: [r],
      async collect() {
        const p = await pool();
        this.reset();
        for (const m of p.models) {
          if (!m.pricePerGpuHour) continue;
          for (const stat of ['min', 'median', 'max'] as const) this.set({ model: m.model, kind: m.kind, stat }, m.pricePerGpuHour[stat]);
        }
      },
    });
    new Gauge({
      name: 'gantry_pool_nodes',
      help: 'Nodes by state (draining nodes are also online)',
      labelNames: ['state'],
      registers: [r],
      async collect() {
        const p = await pool();
        for (const state of ['online', 'offline', 'draining'] as const) this.set({ state }, p.nodes[state]);
      },
    });
    new Gauge({
      name: 'gantry_pool_cpu_cores',
      help: 'CPU cores of online nodes, total and free',
      labelNames: ['state'],
      registers: [r],
      async collect() {
        const p = await pool();
        this.set({ state: 'total' }, p.cpu.cores);
        this.set({ state: 'free' }, p.cpu.free);
      },
    });
    new Gauge({
      name: 'gantry_pool_memory_bytes',
      help: 'Memory of online nodes, total and free',
      labelNames: ['state'],
      registers: [r],
      async collect() {
        const p = await pool();
        this.set({ state: 'total' }, p.memory.totalMb * 1024 * 1024);
        this.set({ state: 'free' }, p.memory.freeMb * 1024 * 1024);
      },
    });
    new Gauge({
      name: 'gantry_queue_depth',
      help: 'Queued jobs by requested GPU model ("" for any or none)',
      labelNames: ['model'],
      registers: [r],
      async collect() {
        const p = await pool();
        this.reset();
        for (const q of p.queue.byModel) this.set({ model: q.model ?? '' }, q.jobs);
      },
    });
    new Gauge({
      name: 'gantry_queue_oldest_wait_seconds',
      help: 'How long the oldest queued job has waited (0 when none is queued)',
      registers: [r],
      async collect() {
        this.set((await pool()).queue.oldestWaitSeconds ?? 0);
      },
    });
    new Gauge({
      name: 'gantry_jobs_last_hour',
      help: 'Jobs started, succeeded and failed in the last hour',
      labelNames: ['event'],
      registers: [r],
      async collect() {
        const p = await pool();
        for (const event of ['started', 'succeeded', 'failed'] as const) this.set({ event }, p.lastHour[event]);
      },
    });
    new Counter({
      name: 'gantry_lease_expiries_total',
      help: 'Leases that expired on their nodes (the pool-wide count kept on each node)',
      registers: [r],
      async collect() {
        const [row] = await source.database.rows<{ n: unknown }>(sql`select coalesce(sum(lease_expiries), 0) as n from nodes`);
        this.reset();
        this.inc(toNumber(row?.n));
      },
    });
    new Gauge({
      name: 'gantry_node_heartbeat_lag_seconds',
      help: 'Time since the last heartbeat of online nodes (max and median)',
      labelNames: ['stat'],
      registers: [r],
      async collect() {
        const now = source.clock.now().toISOString();
        const [row] = await source.database.rows<{ max: unknown; median: unknown }>(sql`
          select max(extract(epoch from (${now}::timestamptz - last_heartbeat_at))) as max,
            percentile_cont(0.5) within group (order by extract(epoch from (${now}::timestamptz - last_heartbeat_at))) as median
          from nodes where status = 'online' and last_heartbeat_at is not null`);
        this.reset();
        if (row?.max === null || row?.max === undefined) return;
        this.set({ stat: 'max' }, Math.max(0, Number(row.max)));
        this.set({ stat: 'median' }, Math.max(0, Number(row.median)));
      },
    });
  }

  /** The text exposition format, and its content type. */
  async render(): Promise<{ body: string; contentType: string }> {
    return { body: await this.registry.metrics(), contentType: this.registry.contentType };
  }
}
