import { ApiRequestError, type ApiClient } from '../../shared/client.ts';
import { LogChunkAccepted, type LogStream } from '../../shared/logs.ts';

/** A chunk as the shipper hands it to its transport: the lease epoch is the transport's. */
export interface OutgoingChunk {
  seq: number;
  stream: LogStream;
  at: string;
  lines: string[];
}

/** What became of one chunk; a transport throws for what is worth retrying (network, 5xx). */
export type SendOutcome =
  | { kind: 'stored' }
  /** The seq was taken by other lines (this agent restarted mid-job): renumber from nextSeq. */
  | { kind: 'renumber'; nextSeq: number }
  /** The coordinator's per-job cap is reached: only system lines are taken from now on. */
  | { kind: 'capped' }
  /** The lease is gone (another epoch, job ended or moved): nothing more is taken. */
  | { kind: 'gone'; why: string }
  /** The coordinator refused this chunk as malformed: retrying cannot help. */
  | { kind: 'rejected'; why: string };

export type LogTransport = (chunk: OutgoingChunk) => Promise<SendOutcome>;

/** POST /v1/agent/jobs/{id}/logs with the lease epoch, through the agent's authenticated client. */
export function httpLogTransport(client: ApiClient, jobId: string, epoch: number): LogTransport {
  return async (chunk) => {
    try {
      const answer = await client.post(`/v1/agent/jobs/${encodeURIComponent(jobId)}/logs`, { epoch, ...chunk }, LogChunkAccepted);
      if (answer.nextSeq !== undefined) return { kind: 'renumber', nextSeq: answer.nextSeq };
      return { kind: 'stored' };
    } catch (err) {
      if (err instanceof ApiRequestError) {
        if (err.status === 413) return { kind: 'capped' };
        if (err.status === 404 || err.status === 409) return { kind: 'gone', why: err.message };
        if (err.status === 400) return { kind: 'rejected', why: err.message };
      }
      throw err;
    }
  };
}
