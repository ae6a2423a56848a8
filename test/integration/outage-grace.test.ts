import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { eq } from 'drizzle-orm';
import type { Clock } from '../../coordinator/clock.ts';
import { loadConfig } from '../../coordinator/config.ts';
import { DatabaseAvailability } from '../../coordinator/db/availability.ts';
import type { Database } from '../../coordinator/db/open.ts';
import { accounts, jobs, nodes } from '../../coordinator/db/schema/index.ts';
import { submitJob } from '../../coordinator/jobs/lifecycle.ts';
import { LeaseSweeper } from '../../coordinator/leases/sweeper.ts';
import { silentLogger } from '../../coordinator/log.ts';
import { sweepOfflineNodes } from '../../coordinator/nodes/sweeper.ts';
import { schedulePass } from '../../coordinator/scheduler/placement.ts';
import { newId } from '../../shared/ids.ts';
import { JobSpec } from '../../shared/jobs.ts';
import { createTestDatabase, dbSkipReason, type TestDatabase } from '../support/database.ts';
import { insertNode, insertProvider, jobSpec } from '../support/factories.ts';

// After a database outage the sweepers give agents one TTL to be heard again before they act on
// heartbeats missed while it was away: a 30 s outage must not send every node offline nor expire
// every lease. The outage is played on the coordinator's view of the database (its availability
// probe fails, then answers) over a real database, with a clock the test moves.

class TestClock implements Clock {
  constructor(public t: number) {}
  now() {
    return new Date(this.t);
  }
}

describe.skipIf(dbSkipReason)('the sweepers after a database outage', () => {
  let testDb: TestDatabase;
  let database: Database;
  beforeAll(async () => {
    testDb = await createTestDatabase();
    database = testDb.database;
  });
  afterAll(async () => testDb?.drop());

  it('neither takes a node offline nor expires a lease for one TTL after the database returns', async () => {
    const leaseTtlSeconds = 15;
    const nodeTtlSeconds = 10;
    const start = Date.parse('2031-01-01T00:00:00Z');
    const clock = new TestClock(start);
    const { db } = database;
    // The probe sees the database as the coordinator would: away while `away` is set.
    let away = false;
    const seen: Database = {
      ...database,
      driver: 'postgres',
      rows: (q) => (away ? Promise.reject(Object.assign(new Error('connect ECONNREFUSED'), { code: 'ECONNREFUSED' })) : database.rows(q)),
    };
    const availability = new DatabaseAvailability(seen, clock, silentLogger);
    const config = loadConfig({ GANTRY_LEASE_TTL_SECONDS: String(leaseTtlSeconds), GANTRY_NODE_TTL_SECONDS: String(nodeTtlSeconds) });
    const sweeper = new LeaseSweeper({ database, clock, log: silentLogger, leaseTtlSeconds, availability, onFreed: () => {} });
    const nodeSweep = () => sweepOfflineNodes({ database, availability, config }, clock.now());

    const node = await insertNode(db, { accountId: await insertProvider(db), gpus: [{ model: 'NVIDIA L4' }] }, { audience: 'grace' });
    await db.update(nodes).set({ lastHeartbeatAt: clock.now() }).where(eq(nodes.id, node.nodeId));
    const clientId = newId('account');
    await db.insert(accounts).values({ id: clientId, name: 'grace-client', kind: 'client' });
    const { job } = await submitJob(db, clientId, JobSpec.parse(jobSpec({}, { gpus: 1 })), undefined, clock.now());
    await schedulePass({ database, clock, log: silentLogger, leaseTtlSeconds, batchSize: 10, full: true });
    const leased = (await db.select().from(jobs).where(eq(jobs.id, job.id)))[0]!;
    expect(leased).toMatchObject({ status: 'leased', nodeId: node.nodeId });

    // Well after start, the database goes away for 30 s: no heartbeat, no renewal meanwhile.
    clock.t = start + 60_000;
    await db.update(nodes).set({ lastHeartbeatAt: clock.now() }).where(eq(nodes.id, node.nodeId));
    await db.update(jobs).set({ leaseExpiresAt: new Date(clock.t + leaseTtlSeconds * 1000) }).where(eq(jobs.id, job.id));
    clock.t += 1000;
    away = true;
    await availability.probe();
    expect(availability.available).toBe(false);
    clock.t += 30_000;
    expect(await sweeper.sweep()).toBe(0);
    expect(await nodeSweep()).toEqual([]);
    away = false;
    await availability.probe();
    expect(availability.available).toBe(true);

    // Back: the lease and the heartbeat are past their TTLs, yet for one TTL nothing happens.
    clock.t += nodeTtlSeconds * 1000 - 1000;
    expect(await nodeSweep()).toEqual([]);
    clock.t += leaseTtlSeconds * 1000 - nodeTtlSeconds * 1000;
    expect(await sweeper.sweep()).toBe(0);
    expect((await db.select().from(nodes).where(eq(nodes.id, node.nodeId)))[0]!.status).toBe('online');
    expect((await db.select().from(jobs).where(eq(jobs.id, job.id)))[0]!.status).toBe('leased');

    // A TTL after the return, silence counts again: an agent that never came back loses both.
    clock.t += 2000;
    expect((await nodeSweep()).map((n) => n.id)).toEqual([node.nodeId]);
    expect(await sweeper.sweep()).toBe(1);
    expect((await db.select().from(jobs).where(eq(jobs.id, job.id)))[0]!.status).toBe('queued');
  });
});
