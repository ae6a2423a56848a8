import type { Context } from 'hono';
import { HTTPException } from 'hono/http-exception';
import type { ContentfulStatusCode } from 'hono/utils/http-status';
import type { ZodError } from 'zod';
import { type ErrorCode, type FieldError, type Problem, fieldErrors, problemTypePrefix } from '../../shared/errors.ts';
import { isDatabaseUnavailable } from '../db/availability.ts';
import { ApiError } from '../errors.ts';
import { describeFailure } from '../log.ts';
import type { AppEnv } from './env.ts';

export function statusOf(code: ErrorCode): ContentfulStatusCode {
  switch (code) {
    case 'validation':
    case 'malformed_json':
      return 400;
    case 'unauthenticated':
      return 401;
    case 'forbidden':
      return 403;
    case 'not_found':
    case 'no_route':
      return 404;
    case 'gone':
      return 410;
    case 'conflict':
    case 'stale_lease':
      return 409;
    case 'payload_too_large':
      return 413;
    case 'unsupported_media_type':
      return 415;
    case 'locked':
      return 423;
    case 'rate_limited':
      return 429;
    case 'internal':
      return 500;
    case 'unavailable':
      return 503;
  }
}

const titles: Record<ErrorCode, string> = {
  validation: 'Invalid request',
  malformed_json: 'Malformed JSON',
  unauthenticated: 'Authentication required',
  forbidden: 'Forbidden',
  not_found: 'Not found',
  no_route: 'No such route',
  gone: 'Gone',
  conflict: 'Conflict',
  stale_lease: 'Stale lease',
  payload_too_large: 'Payload too large',
  unsupported_media_type: 'Unsupported media type',
  locked: 'Locked',
  rate_limited: 'Too many requests',
  internal: 'Internal error',
  unavailable: 'Service unavailable',
};

/** The RFC 9457 body of a code, for answers written outside Hono (the service front door). */
export function problemBody(code: ErrorCode, detail: string, instance?: string): Problem {
  return { type: `${problemTypePrefix}${code}`, title: titles[code], status: statusOf(code), detail, ...(instance ? { instance } : {}), code };
}

export function problemResponse(
  c: Context<AppEnv>,
  code: ErrorCode,
  detail: string,
  errors?: FieldError[],
  retryAfterSeconds?: number,
): Response {
  const status = statusOf(code);
  const body: Problem = {
    type: `${problemTypePrefix}${code}`,
    title: titles[code],
    status,
    detail,
    instance: c.get('requestId'),
    code,
    ...(errors && errors.length ? { errors } : {}),
  };
  if (code === 'unauthenticated') c.header('WWW-Authenticate', 'Bearer');
  if (retryAfterSeconds !== undefined) c.header('Retry-After', String(retryAfterSeconds));
  // The body was refused unread: end the connection, so that its unread rest is not taken for
  // the next request and the client does not reuse a socket the server is about to drop.
  if (code === 'payload_too_large' || code === 'unsupported_media_type') c.header('Connection', 'close');
  return c.body(JSON.stringify(body), status, { 'content-type': 'application/problem+json' });
}

export function validationProblem(c: Context<AppEnv>, target: string, error: ZodError): Response {
  const errors = fieldErrors(error.issues, target === 'json' ? '' : target);
  const first = errors[0];
  const detail = first ? `${first.path || '(body)'}: ${first.message}` : 'the request is not valid';
  return problemResponse(c, 'validation', detail, errors);
}

/** What a 503 for a database outage asks clients to wait before they try again. */
const databaseRetryAfterSeconds = 5;

/** onError for the whole app: every failure leaves as problem+json; a 500 says nothing more. */
export function renderError(err: Error, c: Context<AppEnv>): Response {
  if (err instanceof ApiError) return problemResponse(c, err.code, err.message, err.errors, err.extra?.retryAfterSeconds);
  if (err instanceof HTTPException) {
    if (err.status === 413) return problemResponse(c, 'payload_too_large', err.message || 'the request body is too large');
    if (err.status === 415) return problemResponse(c, 'unsupported_media_type', 'send the body as application/json');
    if (err.status === 400 && /JSON/i.test(err.message)) {
      return problemResponse(c, 'malformed_json', 'the request body is not valid JSON');
    }
    if (err.status === 400) return problemResponse(c, 'validation', err.message || 'bad request');
    if (err.status === 401) return problemResponse(c, 'unauthenticated', err.message || 'authentication required');
    if (err.status === 404) return problemResponse(c, 'no_route', 'not found');
  }
  if (isDatabaseUnavailable(err)) {
    c.get('log')?.warn('request failed: database unavailable', { requestId: c.get('requestId'), error: describeFailure(err) });
    return problemResponse(c, 'unavailable', 'the database is unavailable; try again shortly', undefined, databaseRetryAfterSeconds);
  }
  c.get('log')?.error('request failed', { requestId: c.get('requestId'), error: describeFailure(err) });
  return problemResponse(c, 'internal', `internal error (request ${c.get('requestId')})`);
}
