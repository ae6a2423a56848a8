import { createRoute, z } from '@hono/zod-openapi';
import { idPattern } from '../../shared/ids.ts';
import { Account, ApiKeyInfo, CreateAccount, CreateKey, CreatedKey } from '../../shared/accounts.ts';
import { createAccount, createKey, revokeKey, type AccountRow, type ApiKeyRow } from '../accounts/service.ts';
import { requireKey } from '../auth/api-keys.ts';
import type { AppDeps } from '../deps.ts';
import { bearerAuth, createRouter, errorResponses } from './router.ts';

const toAccount = (r: AccountRow): Account => ({ id: r.id, name: r.name, kind: r.kind, createdAt: r.createdAt.toISOString() });
const toKeyInfo = (r: ApiKeyRow): ApiKeyInfo => ({
  id: r.id,
  accountId: r.accountId,
  name: r.name,
  prefix: r.prefix,
  scopes: r.scopes as ApiKeyInfo['scopes'],
  createdAt: r.createdAt.toISOString(),
  lastUsedAt: r.lastUsedAt?.toISOString() ?? null,
  revokedAt: r.revokedAt?.toISOString() ?? null,
});

const json = <T>(schema: T) => ({ content: { 'application/json': { schema } } });
const AccountIdParam = z.object({ id: z.string().regex(idPattern('account'), 'not an account id') });
const KeyIdParam = z.object({ id: z.string().regex(idPattern('apiKey'), 'not a key id') });

export function accountRoutes(deps: AppDeps) {
  const app = createRouter();
  const { db } = deps.database;

  // Each route names who may call it: its key is checked before its input is read.
  const admin = requireKey(deps.keys, 'admin');
  const anyKey = requireKey(deps.keys);

  app.openapi(
    createRoute({
      method: 'post',
      path: '/v1/accounts',
      summary: 'Create an account (admin)',
      security: bearerAuth,
      middleware: admin,
      request: { body: { required: true, ...json(CreateAccount) } },
      responses: { 201: { description: 'Created', ...json(Account) }, ...errorResponses },
    }),
    async (c) => {
      const body = c.req.valid('json');
      const row = await createAccount(db, body.name, body.kind);
      return c.json(toAccount(row), 201);
    },
  );

  app.openapi(
    createRoute({
      method: 'post',
      path: '/v1/accounts/{id}/keys',
      summary: 'Create an API key for an account (admin, or the account itself)',
      security: bearerAuth,
      middleware: anyKey,
      request: { params: AccountIdParam, body: { required: true, ...json(CreateKey) } },
      responses: { 201: { description: 'Created; the key is shown this once', ...json(CreatedKey) }, ...errorResponses },
    }),
    async (c) => {
      const { id } = c.req.valid('param');
      const body = c.req.valid('json');
      const { key, row } = await createKey(db, c.get('principal'), id, body.scopes, body.name ?? null);
      return c.json({ ...toKeyInfo(row), key }, 201);
    },
  );

  app.openapi(
    createRoute({
      method: 'delete',
      path: '/v1/keys/{id}',
      summary: 'Revoke an API key',
      security: bearerAuth,
      middleware: anyKey,
      request: { params: KeyIdParam },
      responses: { 200: { description: 'Revoked', ...json(ApiKeyInfo) }, ...errorResponses },
    }),
    async (c) => {
      const { id } = c.req.valid('param');
      const row = await revokeKey(db, c.get('principal'), id, deps.clock.now());
      await deps.keys.revoked(row.id);
      return c.json(toKeyInfo(row), 200);
    },
  );

  return app;
}
