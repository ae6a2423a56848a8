import { createRoute, z } from '@hono/zod-openapi';
import { idPattern } from '../../shared/ids.ts';
import { Adjustment, Balance, CreditLimit, Deposit, Ledger, LedgerQuery, Payout, TransferResult } from '../../shared/ledger.ts';
import { hasScope } from '../auth/api-keys.ts';
import type { AppDeps } from '../deps.ts';
import { adjust, balanceOf, deposit, payout, setCreditLimit, statement } from '../ledger/accounts.ts';
import { bearerAuth, createRouter, errorResponses } from './router.ts';
import { requireKey } from './auth.ts';

const json = <T>(schema: T) => ({ content: { 'application/json': { schema } } });
const AccountIdParam = z.object({ id: z.string().regex(idPattern('account'), 'not an account id') });

/** Credits, payouts, adjustments (admin); balance and statement (any key, its own account). */
export function ledgerRoutes(deps: AppDeps) {
  const app = createRouter();
  const { db } = deps.database;
  const admin = requireKey(deps.keys, 'admin');
  const anyKey = requireKey(deps.keys);

  const adminPost = <S extends z.ZodType>(path: string, summary: string, body: S) =>
    createRoute({
      method: 'post',
      path,
      summary,
      security: bearerAuth,
      middleware: admin,
      request: { params: AccountIdParam, body: { required: true, ...json(body) } },
      responses: { 200: { description: 'Done (or done before, under the same reference)', ...json(TransferResult) }, ...errorResponses },
    });

  app.openapi(adminPost('/v1/accounts/{id}/credits', "Deposit credit to a client's account (admin); the same reference twice counts once", Deposit), async (c) => {
    const body = c.req.valid('json');
    return c.json(await deposit(db, c.req.valid('param').id, body.amount, body.reference, deps.clock.now()), 200);
  });

  app.openapi(adminPost('/v1/accounts/{id}/payouts', 'Record a payout to a provider (admin), never above what it is owed', Payout), async (c) => {
    const body = c.req.valid('json');
    return c.json(await payout(db, c.req.valid('param').id, body.amount, body.reference, deps.clock.now()), 200);
  });

  app.openapi(
    adminPost('/v1/accounts/{id}/adjustments', 'A compensating transfer (admin): a positive amount credits the account, a negative one debits it', Adjustment),
    async (c) => c.json(await adjust(db, c.req.valid('param').id, c.req.valid('json'), deps.clock.now()), 200),
  );

  app.openapi(
    createRoute({
      method: 'put',
      path: '/v1/accounts/{id}/credit-limit',
      summary: "Set how far below zero a client's balance may go (admin)",
      security: bearerAuth,
      middleware: admin,
      request: { params: AccountIdParam, body: { required: true, ...json(CreditLimit) } },
      responses: { 200: { description: 'The balance under the new limit', ...json(Balance) }, ...errorResponses },
    }),
    async (c) => c.json(await setCreditLimit(db, c.req.valid('param').id, c.req.valid('json').limit, deps.clock.now()), 200),
  );

  app.openapi(
    createRoute({
      method: 'get',
      path: '/v1/balance',
      summary: "Your balance: a client's balance, held and available; a provider's earned, paid out and payable",
      security: bearerAuth,
      middleware: anyKey,
      responses: { 200: { description: 'Each side the key may see; the other is null', ...json(Balance) }, ...errorResponses },
    }),
    async (c) => {
      const p = c.get('principal');
      return c.json(await balanceOf(db, p.accountId, { client: hasScope(p, 'client'), provider: hasScope(p, 'provider') }), 200);
    },
  );

  app.openapi(
    createRoute({
      method: 'get',
      path: '/v1/ledger',
      summary: "Your account's ledger lines in [since, until), oldest first, with job, lease and node",
      security: bearerAuth,
      middleware: anyKey,
      request: { query: LedgerQuery },
      responses: { 200: { description: 'The lines', ...json(Ledger) }, ...errorResponses },
    }),
    async (c) => {
      const p = c.get('principal');
      const may = { client: hasScope(p, 'client'), provider: hasScope(p, 'provider') };
      return c.json(await statement(db, p.accountId, may, c.req.valid('query'), deps.clock.now()), 200);
    },
  );
  return app;
}
