import { describe, expect, it } from 'vitest';
import { describeError } from '../../../cli/errors.ts';
import { ApiRequestError } from '../../../shared/client.ts';

const problem = (code: 'no_route' | 'not_found', detail: string) =>
  new ApiRequestError(404, { type: `urn:gantry:problem:${code}`, title: 'x', status: 404, code, detail }, detail);

describe('describeError', () => {
  it('tells a route the coordinator lacks by its code, whatever the prose says', () => {
    expect(describeError(problem('no_route', 'GET /v1/new-thing'), 'pool').message).toBe('this coordinator does not offer that yet (GET /v1/new-thing)');
    // A missing thing whose text happens to read like a route is still a missing thing.
    expect(describeError(problem('not_found', 'no route for the job'), 'job').message).toBe('no route for the job');
  });
});
