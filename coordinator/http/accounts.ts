import { createRoute, z } from '@hono/zod-openapi';
import { idPattern } from '../../shared/ids.ts';
import { Account, ApiKeyInfo, CreateAccount, CreateKey, CreatedKey, RevokedKeys, RevokeKeyQuery } from '../../shared/accounts.ts';
import { PageQuery, pageOf } from '../../shared/pagination.ts';
import { createAccount, createKey, listKeys, revokeKey, type AccountRow, type ApiKeyRow } from '../accounts/service.ts';
import type { AppDeps } from '../deps.ts';
import { bearerAuth, createRouter, errorResponses } from './router.ts';
import { requireKey } from './auth.ts';

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
  expiresAt: r.expiresAt?.toISOString() ?? null,
  createdByKeyId: r.createdByKeyId,
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
      const { key, row } = await createKey(
        db,
        c.get('principal'),
        id,
        { scopes: body.scopes, name: body.name ?? null, expiresInSeconds: body.expiresInSeconds },
        deps.clock.now(),
      );
      return c.json({ ...toKeyInfo(row), key }, 201);
    },
  );

  app.openapi(
    createRoute({
      method: 'get',
      path: '/v1/accounts/{id}/keys',
      summary: "List an account's API keys, revoked and expired ones too, oldest first (admin, or the account itself)",
      security: bearerAuth,
      middleware: anyKey,
      request: { params: AccountIdParam, query: PageQuery },
      responses: { 200: { description: 'A page of keys (never the keys themselves)', ...json(pageOf(ApiKeyInfo)) }, ...errorResponses },
    }),
    async (c) => {
      const page = await listKeys(db, c.get('principal'), c.req.valid('param').id, c.req.valid('query'));
      return c.json({ items: page.items.map(toKeyInfo), nextCursor: page.nextCursor }, 200);
    },
  );

  app.openapi(
    createRoute({
      method: 'delete',
      path: '/v1/keys/{id}',
      summary: 'Revoke an API key; with cascade=true also every key it made, down the line',
      description: 'A revoked key is refused at once on every replica, and the streams it opened end.',
      security: bearerAuth,
      middleware: anyKey,
      request: { params: KeyIdParam, query: RevokeKeyQuery },
      responses: { 200: { description: 'Revoked', ...json(RevokedKeys) }, ...errorResponses },
    }),
    async (c) => {
      const { id } = c.req.valid('param');
      const cascade = ['true', '1'].includes(c.req.valid('query').cascade ?? '');
      const { row, cascaded } = await revokeKey(db, c.get('principal'), id, deps.clock.now(), cascade);
      await deps.keys.revoked([row.id, ...cascaded.map((r) => r.id)]);
      return c.json({ ...toKeyInfo(row), cascaded: cascaded.map(toKeyInfo) }, 200);
    },
  );

  return app;
}
