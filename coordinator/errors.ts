import type { ErrorCode, FieldError } from '../shared/errors.ts';

// The coordinator's domain errors: domain code throws them with a code from shared/errors.ts;
// only the HTTP layer (coordinator/http/problem.ts) turns a code into a status and a body.

/** The one error class of the coordinator. */
export class ApiError extends Error {
  constructor(
    readonly code: ErrorCode,
    message: string,
    readonly errors?: FieldError[],
    /** For rate_limited: how long the client should wait (the Retry-After header). */
    readonly extra?: { retryAfterSeconds?: number },
  ) {
    super(message);
  }
}

export const notFound = (what: string) => new ApiError('not_found', `${what} not found`);
