import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type Postgres from 'postgres';
import { guardConnectionSource, postgres } from '../../coordinator/db/postgres-driver.ts';
import { dbSkipReason, itOn, postgresAdminUrl } from '../support/database.ts';

// postgres.js 3.4.9 as the coordinator loads it: a connection whose session died (here: its
// backend terminated, as a database restart does to every one) settles its queries with an error
// the caller can catch, and the pool goes on. Unguarded, the next write throws from a
// setImmediate and ends the process (porsager/postgres#1208), or never leaves (a stale timer).

describe.skipIf(dbSkipReason)('postgres.js with the write guard', () => {
  let sql: Postgres.Sql;
  let killer: Postgres.Sql;
  beforeAll(() => {
    sql = postgres(postgresAdminUrl, { max: 2, onnotice: () => {} });
    killer = postgres(postgresAdminUrl, { max: 1, onnotice: () => {} });
  });
  afterAll(async () => {
    await sql?.end({ timeout: 1 });
    await killer?.end({ timeout: 1 });
  });
  const code = (p: Promise<unknown>) => p.then(() => 'ok', (e: { code?: string }) => e.code ?? String(e));

  itOn('postgres')('a reserved connection whose session died rejects its queries, and the pool works after its release', async () => {
    const reserved = await sql.reserve();
    const [{ pid }] = (await reserved`select pg_backend_pid() as pid`) as unknown as [{ pid: number }];
    await killer`select pg_terminate_backend(${pid})`;
    expect(await code(reserved`select 1`)).toMatch(/CONNECTION_CLOSED|ECONNRESET|57P01/);
    await new Promise((r) => setTimeout(r, 100));
    // Unguarded, this write is the one that ends the process.
    expect(await code(reserved`select 1`)).toBe('CONNECTION_CLOSED');
    reserved.release();
    let ok = 0;
    for (let i = 0; i < 5; i++) if ((await code(sql`select 1`)) === 'ok') ok++;
    // The slot handed back after its close fails once at most, then reconnects.
    expect(ok).toBeGreaterThanOrEqual(4);
    expect(await code(Promise.all([sql`select 1`, sql`select 2`]))).toBe('ok');
  });

  itOn('postgres')('a transaction whose session dies mid-way rejects (its ROLLBACK too), and the pool carries on', async () => {
    let pid = 0;
    // Its outcome is taken at once: the session's end may reach this process before the killer's answer does.
    const tx = code(
      sql.begin(async (t) => {
        [{ pid }] = (await t`select pg_backend_pid() as pid`) as unknown as [{ pid: number }];
        await t`select pg_sleep(5)`;
      }),
    );
    while (!pid) await new Promise((r) => setTimeout(r, 20));
    await killer`select pg_terminate_backend(${pid})`;
    expect(await tx).not.toBe('ok');
    await new Promise((r) => setTimeout(r, 100));
    expect(await code(sql`select 1`)).toBe('ok');
  });

  it('refuses a driver whose source it does not know, rather than run it unguarded', () => {
    expect(() => guardConnectionSource('function nextWrite(fn) { socket.write(chunk, fn) }')).toThrow(/porsager\/postgres#1208/);
  });
});
