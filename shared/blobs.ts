import { z } from 'zod';
import { BlobDigest } from './jobs.ts';

export { BlobDigest };

/** The answer to an upload: the content's sha256 digest, which a job spec's inputs name. */
export const BlobCreated = z.object({ digest: BlobDigest, size: z.number().int().min(0) });
export type BlobCreated = z.infer<typeof BlobCreated>;

/** The small JSON a job may leave in /outputs/result.json, stored on the job. */
export const maxResultBytes = 64 * 1024;

export const JobResultUpload = z
  .object({
    epoch: z.number().int().min(1),
    result: z.unknown(),
  })
  .strict();

export const JobOutputsInfo = z.object({ digest: BlobDigest, size: z.number().int().min(0) });
