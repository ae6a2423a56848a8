import { z } from 'zod';
import { cleanLogLine, cleanNodeMessage } from './text.ts';

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
    // Cleaned, never refused: a refused chunk would be dropped by the agent and the output lost.
    lines: z
      .array(z.string().max(maxLogLineBytes).regex(/^[^\n]*$/, 'one line, no newline').overwrite(cleanLogLine))
      .min(1)
      .max(maxLinesPerChunk),
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

/**
 * A chunk as a client reads it: lines of one stream, each ending in "\n", so text can be
 * written out as it is. Its seq is the cursor for what comes after it.
 */
export const LogBatch = z.object({
  seq: z.number().int(),
  stream: LogStream,
  at: z.string(),
  text: z.string(),
});
export type LogBatch = z.infer<typeof LogBatch>;

export const LogQuery = z.object({
  // The seq of the last chunk already read (a page's nextCursor, an event's id); the page starts after it.
  cursor: z.string().regex(/^\d{1,10}$/, 'not a cursor from a previous page').optional(),
  limit: z.coerce.number().int().min(1).max(10_000).default(1000),
  follow: z.enum(['0', '1', 'true', 'false']).optional(),
});

export const LogPage = z.object({
  items: z.array(LogBatch),
  /** Pass as `cursor` for the next page; null when nothing more is stored now. */
  nextCursor: z.string().nullable(),
  /** True when the job has ended and this page reaches the end of its log. */
  complete: z.boolean(),
});
export type LogPage = z.infer<typeof LogPage>;

/** A progress note the agent adds to the job's events (an image pull, say). */
export const JobProgress = z
  .object({
    epoch: z.number().int().min(1),
    message: z.string().min(1).max(512).overwrite(cleanNodeMessage),
  })
  .strict();

/**
 * The last event of a log stream (`event: end`), and why it came: the job ended (with its
 * status), the key was revoked or expired, the stream reached its longest life or the client
 * fell too far behind (reconnect with Last-Event-ID and nothing is lost), or the coordinator
 * is shutting down (reconnect likewise).
 */
export const logStreamEndReasons = ['ended', 'revoked', 'expired', 'max-life', 'lagging', 'shutdown', 'gone'] as const;
export const LogStreamEnd = z.object({
  reason: z.enum(logStreamEndReasons),
  status: z.string().optional(),
  exitCode: z.number().int().nullable().optional(),
  error: z.string().nullable().optional(),
  detail: z.string().optional(),
});
export type LogStreamEnd = z.infer<typeof LogStreamEnd>;
/** Ends after which a client reconnects from its last id: the job goes on. */
export const resumableEnds: readonly LogStreamEnd['reason'][] = ['max-life', 'lagging', 'shutdown'];
