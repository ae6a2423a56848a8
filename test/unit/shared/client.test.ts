import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { describeError } from '../../../cli/errors.ts';
import { ApiClient, MalformedAnswerError, NoContent } from '../../../shared/client.ts';
import { newId } from '../../../shared/ids.ts';
import { Job, JobEventList } from '../../../shared/jobs.ts';
import { startStandIn, type StandIn } from '../../support/agent-api-stand-in.ts';

// The typed client parses every answer with the shared schema the route answers with: what comes
// back is typed by what was checked, and a malformed answer is one clear error.

describe('ApiClient with a schema', () => {
  let api: StandIn;
  let client: ApiClient;
  beforeEach(async () => {
    api = await startStandIn();
    client = new ApiClient({ baseUrl: api.url, token: 'key' });
  });
  afterEach(() => api.close());

  it('returns the answer as the schema parsed it', async () => {
    const event = { id: 1, at: '2026-12-07T20:00:00.000Z', from: null, to: 'queued', reason: 'submitted' };
    api.on('GET /v1/jobs/:id/events', () => ({ status: 200, body: { items: [event] } }));
    expect(await client.get(`/v1/jobs/${newId('job')}/events`, JobEventList)).toEqual({ items: [event] });
  });

  it('refuses a malformed answer with one line naming the fields, which the CLI prints as it is', async () => {
    api.on('GET /v1/jobs/:id', () => ({ status: 200, body: { id: 'job_x', status: 'sleeping' } }));
    const err = await client.get(`/v1/jobs/${newId('job')}?x=1`, Job).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(MalformedAnswerError);
    const message = (err as Error).message;
    expect(message).toMatch(/^the coordinator's answer to GET \/v1\/jobs\/job_\w+ is not what this client expects \(name: .+; status: .+; .+\)$/);
    expect(message).not.toContain('\n');
    expect(describeError(err, 'job')).toEqual({ message, exitCode: 1 });
  });

  it('takes an empty 204 answer as no content, and refuses a body where none belongs', async () => {
    api.on('POST /v1/agent/jobs/:id/progress', () => ({ status: 204 }));
    // The stand-in writes a body for every answer; a 204 drops it on the wire.
    expect(await client.post(`/v1/agent/jobs/${newId('job')}/progress`, { epoch: 1, message: 'x' }, NoContent)).toBeNull();
    api.on('POST /v1/agent/jobs/:id/result', () => ({ status: 200, body: { stored: true } }));
    await expect(client.post(`/v1/agent/jobs/${newId('job')}/result`, { epoch: 1, result: {} }, NoContent)).rejects.toBeInstanceOf(MalformedAnswerError);
  });
});
