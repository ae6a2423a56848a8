import type { AccountKind, Scope } from '../../shared/accounts.ts';
import { ApiClient } from '../../shared/client.ts';
import { loadConfig } from '../../coordinator/config.ts';
import { silentLogger } from '../../coordinator/log.ts';
import { startCoordinator, type Coordinator } from '../../coordinator/server.ts';
import { createTestDatabase, type TestDatabase } from './database.ts';

export { dbKind, dbSkipReason, itOn } from './database.ts';

export interface Harness {
  url: string;
  coordinator: Coordinator;
  testDb: TestDatabase;
  admin: ApiClient;
  /** A client for any key (or none). */
  client(key?: string): ApiClient;
  /**
   * A fresh account of the kind, with a key holding its scopes: one per test keeps tests apart. A
   * client (or both) account gets `credit` deposited (default 1000), so priced work runs.
   */
  newAccount(kind?: AccountKind, scopes?: Scope[], opts?: { credit?: number }): Promise<{ accountId: string; key: string; api: ApiClient }>;
  /** fetch against the server, for tests that need the raw response. */
  fetch(path: string, init?: RequestInit & { key?: string }): Promise<Response>;
  close(): Promise<void>;
}

/** The real coordinator on a loopback port over a fresh database of this run's kind. */
export async function startHarness(env: Record<string, string> = {}): Promise<Harness> {
  const testDb = await createTestDatabase();
  const config = loadConfig({ PORT: '0', HOST: '127.0.0.1', GANTRY_LOG_REQUESTS: 'false', GANTRY_SHUTDOWN_GRACE_MS: '2000', ...env });
  const coordinator = await startCoordinator({ config, log: silentLogger, database: testDb.database });
  const url = coordinator.url;
  const client = (key?: string) => new ApiClient({ baseUrl: url, ...(key ? { token: key } : {}) });
  const admin = client(coordinator.adminKey!);
  let n = 0;
  return {
    url,
    coordinator,
    testDb,
    admin,
    client,
    async newAccount(kind = 'client', scopes, opts = {}) {
      const account = await admin.post<{ id: string }>('/v1/accounts', { name: `test-${kind}-${++n}`, kind });
      const credit = opts.credit ?? 1000;
      if (kind !== 'provider' && credit > 0) {
        await admin.post(`/v1/accounts/${account.id}/credits`, { amount: credit, reference: 'harness' });
      }
      const wanted = scopes ?? (kind === 'both' ? ['client', 'provider'] : [kind]);
      const { key } = await admin.post<{ key: string }>(`/v1/accounts/${account.id}/keys`, { scopes: wanted });
      return { accountId: account.id, key, api: client(key) };
    },
    fetch(path, init = {}) {
      const { key, ...rest } = init;
      const headers = new Headers(rest.headers);
      if (key) headers.set('authorization', `Bearer ${key}`);
      return fetch(new URL(path, url), { ...rest, headers });
    },
    async close() {
      await coordinator.close();
      await testDb.drop();
    },
  };
}
