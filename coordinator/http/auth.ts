import type { MiddlewareHandler } from 'hono';
import type { Scope } from '../../shared/accounts.ts';
import type { KeyVerifier } from '../auth/api-keys.ts';
import type { AppDeps } from '../deps.ts';
import { ApiError } from '../errors.ts';
import type { AppEnv } from './env.ts';

// Who may call a route, as Hono middleware: the checks themselves live in the domain
// (KeyVerifier, AgentVerifier); this only reads the header and sets the request's context.

/** Authenticates the request's key; with scopes, the key must hold one of them (admin holds all). */
export function requireKey(verifier: KeyVerifier, ...anyOf: Scope[]): MiddlewareHandler<AppEnv> {
  return async (c, next) => {
    const principal = await verifier.verify(c.req.header('authorization'));
    if (anyOf.length && !principal.scopes.includes('admin') && !anyOf.some((s) => principal.scopes.includes(s))) {
      throw new ApiError('forbidden', `this key lacks the ${anyOf.join(' or ')} scope`);
    }
    c.set('principal', principal);
    await next();
  };
}

/** Authenticates an agent request by its own signed token; sets c.get('nodeId'). */
export function requireAgent(deps: Pick<AppDeps, 'agents'>): MiddlewareHandler<AppEnv> {
  return async (c, next) => {
    c.set('nodeId', await deps.agents.verify(c.req.header('authorization')));
    await next();
  };
}
