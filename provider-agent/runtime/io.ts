import { retry } from '../../shared/backoff.ts';
import { ApiRequestError, NoContent, type ApiClient } from '../../shared/client.ts';
import type { LeaseGrant } from '../../shared/leases.ts';
import type { ExecutionContext } from './executor.ts';

export type LeaseIo = Required<Pick<ExecutionContext, 'onProgress' | 'fetchInput' | 'uploadOutputs' | 'uploadResult'>>;

/** Retries what may pass (network, 5xx, an expired agent token) a few times; a 4xx answer is final. */
async function withRetries<T>(what: string, fn: () => Promise<T>, tries = 5): Promise<T> {
  const final = (err: unknown) => err instanceof ApiRequestError && err.status >= 400 && err.status < 500 && err.status !== 401 && err.status !== 429;
  return retry(fn, { initialMs: 500, maxMs: 8000, tries, retryable: (err) => !final(err) }).catch((err) => {
    throw new Error(`${what}: ${(err as Error)?.message ?? String(err)}`);
  });
}

/**
 * The ExecutionContext hooks that reach the coordinator with this lease: inputs, outputs,
 * result and progress notes. The runner spreads them into the context it hands a runtime.
 */
export function leaseIo(client: ApiClient, grant: LeaseGrant, warn: (msg: string, f?: Record<string, unknown>) => void = () => {}): LeaseIo {
  const job = `/v1/agent/jobs/${encodeURIComponent(grant.jobId)}`;
  let lastNote: Promise<unknown> = Promise.resolve();
  return {
    onProgress(message) {
      // In order, never blocking the run; a note that does not arrive is only a note.
      lastNote = lastNote
        .then(() => client.post(`${job}/progress`, { epoch: grant.epoch, message: message.slice(0, 512) }, NoContent))
        .catch((err) => warn('progress note not delivered', { jobId: grant.jobId, error: String((err as Error)?.message ?? err) }));
    },
    fetchInput: (digest) =>
      withRetries(`input ${digest}`, async () => {
        const res = await client.raw('GET', `${job}/inputs/${encodeURIComponent(digest)}?epoch=${grant.epoch}`, { timeoutMs: 3600_000 });
        if (!res.ok || !res.body) {
          const detail = await res.text().catch(() => '');
          throw new ApiRequestError(res.status, null, `HTTP ${res.status} ${detail.slice(0, 300)}`);
        }
        return res.body as unknown as AsyncIterable<Uint8Array>;
      }),
    uploadOutputs: (tar) =>
      withRetries('outputs upload', async () => {
        const res = await client.raw('POST', `${job}/outputs?epoch=${grant.epoch}`, {
          body: tar,
          headers: { 'content-type': 'application/x-tar' },
          timeoutMs: 3600_000,
        });
        if (!res.ok) throw new ApiRequestError(res.status, null, `HTTP ${res.status} ${(await res.text().catch(() => '')).slice(0, 300)}`);
        await res.arrayBuffer();
      }),
    uploadResult: (result) => withRetries('result upload', () => client.post(`${job}/result`, { epoch: grant.epoch, result }, NoContent)).then(() => {}),
  };
}
