import { z } from 'zod';

// The closed list of error codes every part of Gantry speaks; the HTTP status of each
// lives in one exhaustive switch in coordinator/http/problem.ts.
export const errorCodes = [
  'validation',
  'malformed_json',
  'unauthenticated',
  'forbidden',
  'not_found',
  // It existed and ended for good (a service job that stopped): 410.
  'gone',
  // The path or method names no route (an older coordinator, a typo), unlike a thing that is missing.
  'no_route',
  'conflict',
  'stale_lease',
  'payload_too_large',
  'unsupported_media_type',
  'locked',
  'rate_limited',
  'internal',
  'unavailable',
] as const;
export const ErrorCode = z.enum(errorCodes);
export type ErrorCode = z.infer<typeof ErrorCode>;

export const problemTypePrefix = 'urn:gantry:problem:';

export const FieldError = z.object({
  path: z.string().max(512),
  message: z.string().max(2048),
});
export type FieldError = z.infer<typeof FieldError>;

/** RFC 9457 problem details, as every error response carries them. */
export const Problem = z.object({
  type: z.string(),
  title: z.string(),
  status: z.number().int(),
  detail: z.string().optional(),
  instance: z.string().optional(),
  code: ErrorCode,
  errors: z.array(FieldError).optional(),
});
export type Problem = z.infer<typeof Problem>;

/** Turns zod issues into field errors: dotted paths, and one entry per unknown key. */
export function fieldErrors(issues: readonly z.core.$ZodIssue[], prefix = ''): FieldError[] {
  const out: FieldError[] = [];
  for (const issue of issues) {
    const base = [prefix, ...issue.path.map(String)].filter(Boolean).join('.');
    if (issue.code === 'unrecognized_keys') {
      for (const key of issue.keys) out.push({ path: base ? `${base}.${key}` : key, message: 'unknown field' });
    } else {
      out.push({ path: base, message: issue.message });
    }
  }
  return out;
}
