import { defineConfig } from 'vitest/config';

const faultFiles = ['test/e2e/faults.test.ts', 'test/e2e/faults-agent.test.ts'];

// Integration tests run twice, once per database; the harness reads GANTRY_TEST_DB.
export default defineConfig({
  test: {
    // Vitest's default on 2 cores is one file at a time; most e2e time is spent waiting (leases,
    // containers, a restart), and every test makes its own databases, engines and ports.
    maxWorkers: 2,
    testTimeout: 60_000,
    hookTimeout: 120_000,
    teardownTimeout: 30_000,
    projects: [
      { extends: true, test: { name: 'unit', include: ['test/unit/**/*.test.ts'] } },
      {
        extends: true,
        test: { name: 'pglite', include: ['test/integration/**/*.test.ts'], env: { GANTRY_TEST_DB: 'pglite' } },
      },
      {
        extends: true,
        test: {
          name: 'postgres',
          include: ['test/integration/**/*.test.ts'],
          env: { GANTRY_TEST_DB: 'postgres' },
        },
      },
      { extends: true, test: { name: 'e2e', include: ['test/e2e/**/*.test.ts'], exclude: faultFiles } },
      // The fault tests time outages, restarts and lease expiries to the second: they run last, one
      // at a time, with no other file beside them.
      {
        extends: true,
        test: { name: 'e2e-faults', include: faultFiles, maxWorkers: 1, sequence: { groupOrder: 1 } },
      },
    ],
  },
});
