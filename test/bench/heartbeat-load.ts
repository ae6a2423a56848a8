// The heartbeat load of the benchmarks: simulated nodes of 8 GPUs written into a scratch
// PostgreSQL database, each heartbeating with its own EdDSA agent token, in an open loop at a
// target rate. heartbeat.bench.ts measures it alone; log-followers.bench.ts beside other load.
import { generateKeyPairSync, randomBytes, sign, type KeyObject } from 'node:crypto';
import { readdirSync, readFileSync } from 'node:fs';
import { Agent, request } from 'node:http';
import { sql } from 'drizzle-orm';
import { migrate } from '../../coordinator/db/migrate.ts';
import { openDatabase } from '../../coordinator/db/open.ts';
import { accounts, gpus, nodes } from '../../coordinator/db/schema/index.ts';
import { newId } from '../../shared/ids.ts';

export const gpusPerNode = 8;
/** The coordinator's name (GANTRY_NAME) the agent tokens are made for. */
export const benchAudience = 'https://bench.gantry.example';

export interface SimNode {
  id: string;
  key: KeyObject;
  uuids: string[];
  busy: boolean;
  token: string;
  tokenExp: number;
}

/**
 * Migrates the database and registers the nodes straight into the tables (registration is
 * tested through its API elsewhere; this measures heartbeats), half of them busy.
 */
export async function seedNodes(databaseUrl: string, nodeCount: number): Promise<SimNode[]> {
  const sims: SimNode[] = [];
  const database = await openDatabase({ databaseUrl, poolSize: 4 });
  await migrate(database);
  const { db } = database;
  const accountId = newId('account');
  await db.insert(accounts).values({ id: accountId, name: 'bench-provider', kind: 'provider' });
  const host = { cpuCores: 64, cpuModel: 'AMD EPYC 9354', memoryMb: 1_031_000, diskFreeMb: 3_500_000, os: 'Linux 6.1.0-18-amd64', arch: 'x64', hostname: 'h', containerRuntime: { kind: 'docker', version: '24.0.7' } };
  for (let start = 0; start < nodeCount; start += 500) {
    const nodeRows = [];
    const gpuRows: (typeof gpus.$inferInsert)[] = [];
    for (let i = start; i < Math.min(nodeCount, start + 500); i++) {
      const { publicKey, privateKey } = generateKeyPairSync('ed25519');
      const jwk = publicKey.export({ format: 'jwk' }) as { kty: string; crv: string; x: string };
      const id = newId('node');
      const uuids = Array.from({ length: gpusPerNode }, (_, g) => `GPU-${randomBytes(4).toString('hex')}-${randomBytes(2).toString('hex')}-${String(i).padStart(4, '0')}-${g}`);
      sims.push({ id, key: privateKey, uuids, busy: i % 2 === 0, token: '', tokenExp: 0 });
      nodeRows.push({
        id,
        accountId,
        name: `bench-${i}`,
        status: 'online' as const,
        publicKey: { kty: jwk.kty, crv: jwk.crv, x: jwk.x },
        host: { ...host, hostname: `bench-${i}` },
        cpuMillis: 64_000,
        memoryMb: 1_031_000,
        diskMb: 3_500_000,
        lastHeartbeatAt: new Date(),
      });
      uuids.forEach((uuid, g) =>
        gpuRows.push({ nodeId: id, id: uuid, index: g, uuid, model: 'NVIDIA H100 80GB HBM3', memoryMb: 81_559, driverVersion: '590.48.01', cudaVersion: '13.1', pciBusId: `00000000:${(0x18 + g).toString(16)}:00.0` }),
      );
    }
    await db.insert(nodes).values(nodeRows);
    await db.insert(gpus).values(gpuRows);
  }
  await database.rows(sql`analyze`);
  await database.close();
  return sims;
}

/** Sends heartbeats as the simulated nodes, each with its agent token and changing metrics. */
export class HeartbeatSender {
  private beat = 0;
  private readonly header = b64({ alg: 'EdDSA', typ: 'JWT' });
  readonly agent = new Agent({ keepAlive: true, maxSockets: 256 });
  private target: URL;

  constructor(base: string) {
    this.target = new URL(base);
  }

  /** Resolves with the status (0 when the request failed). */
  send(s: SimNode): Promise<number> {
    const body = this.bodyFor(s);
    const token = this.tokenFor(s, Math.floor(Date.now() / 1000));
    return new Promise((resolve) => {
      const req = request(
        {
          agent: this.agent,
          host: this.target.hostname,
          port: this.target.port,
          path: '/v1/agent/heartbeat',
          method: 'POST',
          headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) },
        },
        (res) => {
          res.resume();
          res.on('end', () => resolve(res.statusCode ?? 0));
        },
      );
      req.on('error', () => resolve(0));
      req.setTimeout(30_000, () => req.destroy());
      req.end(body);
    });
  }

  // An agent token as provider-agent/agent-token.ts makes one (EdDSA, a minute of life, reused
  // until 15 s before its end), signed with node:crypto to keep the load generator light.
  private tokenFor(s: SimNode, nowS: number): string {
    if (s.tokenExp - nowS > 15) return s.token;
    const payload = b64({ sub: s.id, aud: benchAudience, iat: nowS, exp: nowS + 60 });
    const signature = sign(null, Buffer.from(`${this.header}.${payload}`), s.key).toString('base64url');
    s.token = `${this.header}.${payload}.${signature}`;
    s.tokenExp = nowS + 60;
    return s.token;
  }

  private bodyFor(s: SimNode): string {
    const beat = ++this.beat;
    const gpuMetrics = s.uuids.map((id, g) =>
      s.busy
        ? { id, utilizationPct: 80 + ((beat + g) % 21), memoryUsedMb: 60_000 + ((beat * 7 + g) % 4000), temperatureC: 62 + ((beat + g) % 9), powerW: 540 + ((beat * 13 + g) % 150) + 0.25 }
        : { id, utilizationPct: 0, memoryUsedMb: 4, temperatureC: 31, powerW: 70 + (beat % 2) },
    );
    return JSON.stringify({
      jobs: [],
      metrics: { at: new Date().toISOString(), host: { loadAvg1: s.busy ? 12.5 : 0.1, memoryUsedMb: s.busy ? 300_000 : 9_000 }, gpus: gpuMetrics },
    });
  }
}

const b64 = (o: object) => Buffer.from(JSON.stringify(o)).toString('base64url');

export interface OpenLoopResult {
  /** Latencies of the heartbeats sent after the warm-up, from the moment each was sent. */
  latencies: number[];
  measuredS: number;
  /** How late the generator sent a heartbeat, at worst. */
  lateMs: number;
  /** The slowest heartbeat of each second of the run. */
  slowest: Map<number, number>;
}

/**
 * Every node heartbeats once per interval, each at its own phase, for warmup + seconds; those
 * sent after the warm-up are measured. onMeasureStart runs when measuring starts, onTick every
 * few milliseconds, count with each answer's status.
 */
export async function openLoop(
  sender: HeartbeatSender,
  sims: SimNode[],
  opts: { intervalS: number; warmupS: number; seconds: number; onMeasureStart?: () => void; onTick?: () => void; count?: (status: number) => void },
): Promise<OpenLoopResult> {
  const latencies: number[] = [];
  const slowest = new Map<number, number>();
  let lateMs = 0;
  let measuring = false;
  let measureStart = 0;
  const runStart = performance.now();
  const runEnd = runStart + (opts.warmupS + opts.seconds) * 1000;
  const intervalMs = opts.intervalS * 1000;
  const inFlight = new Set<Promise<void>>();
  await new Promise<void>((resolve) => {
    let next = 0; // heartbeat k is node k % n, due at (k / n) * interval
    const tick = () => {
      const now = performance.now();
      if (!measuring && now - runStart >= opts.warmupS * 1000) {
        measuring = true;
        measureStart = now;
        opts.onMeasureStart?.();
      }
      opts.onTick?.();
      if (now >= runEnd) return resolve();
      for (;;) {
        const due = runStart + (next / sims.length) * intervalMs;
        if (due > now) break;
        const s = sims[next % sims.length]!;
        next++;
        if (measuring) lateMs = Math.max(lateMs, now - due);
        const counted = measuring;
        const t0 = performance.now();
        const p = sender.send(s).then((status) => {
          opts.count?.(status);
          if (counted) {
            const ms = performance.now() - t0;
            latencies.push(ms);
            const second = Math.floor((t0 - runStart) / 1000);
            slowest.set(second, Math.max(slowest.get(second) ?? 0, ms));
          }
          inFlight.delete(p);
        });
        inFlight.add(p);
      }
      setTimeout(tick, 5);
    };
    tick();
  });
  const measuredS = (performance.now() - measureStart) / 1000;
  await Promise.all(inFlight);
  return { latencies, measuredS, lateMs, slowest };
}

/** The p-th percentile of sorted values. */
export const percentile = (sorted: number[], p: number) => sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] ?? NaN;

// /proc/<pid>/stat: utime and stime in clock ticks (100 per second on Linux).
export function cpuTicks(p: number): number {
  const stat = readFileSync(`/proc/${p}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return Number(fields[11]) + Number(fields[12]);
}
/** CPU ticks of the PostgreSQL backends serving the scratch database (their title names it). */
export function postgresTicks(dbName: string): number {
  let total = 0;
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      if (!readFileSync(`/proc/${entry}/cmdline`, 'utf8').includes(dbName)) continue;
      total += cpuTicks(Number(entry));
    } catch {
      // gone meanwhile
    }
  }
  return total;
}
export function rssMb(p: number): number {
  const m = readFileSync(`/proc/${p}/status`, 'utf8').match(/^VmRSS:\s+(\d+) kB/m);
  return m ? Number(m[1]) / 1024 : 0;
}
