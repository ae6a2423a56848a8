import { expect } from 'vitest';
import { Problem, problemTypePrefix, type ErrorCode } from '../../shared/errors.ts';

export interface ExpectedProblem {
  status: number;
  code: ErrorCode;
  title: string;
  /** A part of the detail line, or a pattern for it. */
  detail?: string | RegExp;
  /** Field errors that must be present (path, and a part of the message when given). */
  errors?: { path: string; message?: string | RegExp }[];
}

/** Asserts an RFC 9457 answer: status, content type, type, title, status, detail and failing fields. */
export async function expectProblem(res: Response, want: ExpectedProblem): Promise<Problem> {
  const text = await res.text();
  expect(res.status, text).toBe(want.status);
  expect(res.headers.get('content-type')).toMatch(/^application\/problem\+json/);
  const body = Problem.parse(JSON.parse(text));
  expect(body.type).toBe(`${problemTypePrefix}${want.code}`);
  expect(body.code).toBe(want.code);
  expect(body.title).toBe(want.title);
  expect(body.status).toBe(want.status);
  expect(body.detail).toEqual(expect.any(String));
  expect(body.detail!.length).toBeGreaterThan(0);
  if (want.detail !== undefined) {
    if (typeof want.detail === 'string') expect(body.detail).toContain(want.detail);
    else expect(body.detail).toMatch(want.detail);
  }
  // The request id, also sent as a header, so a client can quote it and an operator find the log line.
  expect(body.instance).toEqual(expect.any(String));
  expect(res.headers.get('x-request-id')).toBe(body.instance);
  if (want.errors) {
    const got = body.errors ?? [];
    for (const e of want.errors) {
      const match = got.find(
        (g) =>
          g.path === e.path &&
          (e.message === undefined || (typeof e.message === 'string' ? g.message.includes(e.message) : e.message.test(g.message))),
      );
      expect(match, `field error ${e.path} ${e.message ?? ''} in ${JSON.stringify(got)}`).toBeDefined();
    }
  }
  return body;
}
