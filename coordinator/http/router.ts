import { OpenAPIHono } from '@hono/zod-openapi';
import { Problem } from '../../shared/errors.ts';
import { findUnstorable } from '../../shared/text.ts';
import type { AppEnv } from './env.ts';
import { problemResponse, validationProblem } from './problem.ts';

/**
 * A resource's sub-app: validation failures from its declared schemas become problem+json, and
 * so does a NUL or a lone surrogate left in any validated string (PostgreSQL cannot store them:
 * unchecked, they end as a 500). A node's free text is cleaned by its schema before this check.
 */
export function createRouter(): OpenAPIHono<AppEnv> {
  return new OpenAPIHono<AppEnv>({
    defaultHook: (result, c) => {
      if (!result.success) return validationProblem(c as never, result.target, result.error);
      const at = findUnstorable(result.data);
      if (at === null) return undefined;
      const path = [result.target === 'json' ? '' : result.target, at].filter(Boolean).join('.');
      const message = 'a NUL character or an unpaired surrogate is not allowed in text';
      return problemResponse(c as never, 'validation', `${path || '(body)'}: ${message}`, [{ path, message }]);
    },
  });
}

const problem = (description: string) => ({
  description,
  content: { 'application/problem+json': { schema: Problem } },
});

/** The error answers every authenticated route can give, for the OpenAPI document. */
export const errorResponses = {
  400: problem('Invalid request'),
  401: problem('Missing, unknown or revoked API key'),
  403: problem('The key lacks the scope'),
  404: problem('Not found, or another tenant’s'),
  409: problem('Conflict'),
  413: problem('Body too large'),
  415: problem('Body is not JSON'),
} as const;

/** For the routes that cap how many a key may hold at once (log streams). */
export const tooManyResponse = { 429: problem('Too many open at once (Retry-After says when to try again)') } as const;

export const bearerAuth = [{ bearerAuth: [] }];
/** Agent routes: the agent's own signed token, not an API key. */
export const agentAuth = [{ agentToken: [] }];
