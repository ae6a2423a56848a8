import { ApiError } from '../errors.ts';

/**
 * Content-addressed bytes behind job inputs and outputs. Who may read a digest is not the
 * store's business (coordinator/blobs/service.ts decides); the store keeps bytes by digest.
 * The database-chunk store is the default, so every coordinator replica serves every blob;
 * an S3-compatible store implements the same three calls for large files.
 */
export interface BlobStore {
  /**
   * Reads source to its end and keeps it under its sha256 digest ("sha256:<hex>"). Storing
   * bytes that are already there keeps one copy. Past maxBytes it stops reading, keeps
   * nothing, and throws BlobTooLargeError.
   */
  put(source: AsyncIterable<Uint8Array>, maxBytes: number): Promise<{ digest: string; size: number }>;
  /** The stored bytes in order, or null when the digest is not stored. Read lazily, chunk by chunk. */
  open(digest: string): Promise<AsyncIterable<Uint8Array> | null>;
  has(digest: string): Promise<boolean>;
}

export class BlobTooLargeError extends ApiError {
  constructor(readonly maxBytes: number) {
    super('payload_too_large', `the body is over the ${maxBytes}-byte limit`);
  }
}

/** An async iterable over a web ReadableStream, which Node's types do not all declare iterable. */
export async function* fromWebStream(stream: ReadableStream<Uint8Array> | null): AsyncIterable<Uint8Array> {
  if (!stream) return;
  const reader = stream.getReader();
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) return;
      if (value) yield value;
    }
  } finally {
    reader.releaseLock();
  }
}

/** A web ReadableStream pulling from an async iterable, one chunk per pull (backpressure kept). */
export function toWebStream(source: AsyncIterable<Uint8Array>): ReadableStream<Uint8Array> {
  const it = source[Symbol.asyncIterator]();
  return new ReadableStream<Uint8Array>({
    async pull(controller) {
      try {
        const { done, value } = await it.next();
        if (done) controller.close();
        else controller.enqueue(value);
      } catch (err) {
        controller.error(err);
      }
    },
    async cancel() {
      await it.return?.();
    },
  });
}
