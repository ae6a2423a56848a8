import { z } from 'zod';

export const logStreams = ['stdout', 'stderr', 'system'] as const;
export const LogStream = z.enum(logStreams);
export type LogStream = z.infer<typeof LogStream>;

/** Longest line the agent ships as one; a longer one is cut into pieces of this size. */
export const maxLogLineBytes = 16 * 1024;
/** Most lines in one chunk; the agent also bounds a chunk's bytes (below the body limit). */
export const maxLinesPerChunk = 10_000;
/** Most bytes of text in one chunk, kept well under the coordinator's 1 MiB JSON body limit. */
export const maxChunkBytes = 256 * 1024;

/**
 * One numbered chunk of a job's output, as the agent posts it with its lease epoch: lines of
 * one stream, in order. (job, seq) is unique, so a retried chunk changes nothing.
 */
export const LogChunk = z
  .object({
    epoch: z.number().int().min(1),
    seq: z.number().int().min(0).max(2_000_000_000),
    stream: LogStream,
    at: z.iso.datetime({ offset: true }),
    lines: z.array(z.string().max(maxLogLineBytes).regex(/^[^\n]*$/, 'one line, no newline')).min(1).max(maxLinesPerChunk),
  })
  .strict();
export type LogChunk = z.infer<typeof LogChunk>;

export const LogChunkAccepted = z.object({
  seq: z.number().int(),
  stored: z.boolean(),
  /** Set when seq was taken by different lines (the agent restarted): renumber from here. */
  nextSeq: z.number().int().optional(),
});
export type LogChunkAccepted = z.infer<typeof LogChunkAccepted>;

/** A chunk as a client reads it: its seq is the cursor for the next page (`after`). */
export const LogBatch = z.object({
  seq: z.number().int(),
  stream: LogStream,
  at: z.string(),
  lines: z.array(z.string()),
});
export type LogBatch = z.infer<typeof LogBatch>;

export const LogQuery = z.object({
  // The seq of the last chunk already read; the page starts after it.
  after: z.coerce.number().int().min(-1).max(2_000_000_000).default(-1),
  limit: z.coerce.number().int().min(1).max(10_000).default(1000),
  follow: z.enum(['0', '1', 'true', 'false']).optional(),
});

export const LogPage = z.object({
  items: z.array(LogBatch),
  /** Pass as `after` for the next page; null when nothing was read past `after`. */
  next: z.number().int().nullable(),
  /** True when the job has ended and every stored chunk up to here was returned. */
  complete: z.boolean(),
});
export type LogPage = z.infer<typeof LogPage>;

/** The last server-sent event of a followed log: the job ended and every line was sent. */
export const LogEnd = z.object({ status: z.string(), exitCode: z.number().int().nullable(), error: z.string().nullable() });

/** A progress note the agent adds to the job's events (an image pull, say). */
export const JobProgress = z
  .object({
    epoch: z.number().int().min(1),
    message: z.string().min(1).max(512),
  })
  .strict();
