import { describe, expect, it } from 'vitest';
import { sql } from 'drizzle-orm';
import { loadConfig } from '../../coordinator/config.ts';
import { silentLogger } from '../../coordinator/log.ts';
import { startCoordinator } from '../../coordinator/server.ts';
import { createTestDatabase } from '../support/database.ts';
import { dbSkipReason } from '../support/harness.ts';

const config = () => loadConfig({ PORT: '0', HOST: '127.0.0.1', GANTRY_LOG_REQUESTS: 'false', GANTRY_SHUTDOWN_GRACE_MS: '1000' });

describe.skipIf(dbSkipReason)('health and readiness', () => {
  it('/healthz and /readyz answer without a key; /readyz says 503 once the database is gone', async () => {
    const testDb = await createTestDatabase();
    const coordinator = await startCoordinator({ config: config(), log: silentLogger, database: testDb.database });
    try {
      const health = await fetch(`${coordinator.url}/healthz`);
      expect(health.status).toBe(200);
      expect(await health.json()).toEqual({ status: 'ok' });
      const ready = await fetch(`${coordinator.url}/readyz`);
      expect(ready.status).toBe(200);
      expect(await ready.json()).toEqual({ status: 'ok' });

      // Migrations not all recorded: not ready.
      await testDb.database.rows(sql`delete from drizzle.__drizzle_migrations`);
      const unmigrated = await fetch(`${coordinator.url}/readyz`);
      expect(unmigrated.status).toBe(503);
      expect(await unmigrated.json()).toMatchObject({ status: 'unavailable' });

      // The database closed under it: still up, not ready.
      await testDb.database.close();
      const gone = await fetch(`${coordinator.url}/readyz`);
      expect(gone.status).toBe(503);
      expect((await fetch(`${coordinator.url}/healthz`)).status).toBe(200);
    } finally {
      await coordinator.close();
      await testDb.drop().catch(() => {});
    }
  });
});
