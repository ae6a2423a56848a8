import type { ApiClient } from '../shared/client.ts';
import { ApiRequestError } from '../shared/client.ts';
import type { Problem } from '../shared/errors.ts';
import { idPattern, type IdKind } from '../shared/ids.ts';
import { createParser } from 'eventsource-parser';
import type { z } from 'zod';
import { Job } from '../shared/jobs.ts';
import { pageOf } from '../shared/pagination.ts';
import { CliError, UsageError } from './errors.ts';

// Small pieces of talking to the coordinator that several commands share.

/** An id argument, checked before any request so a typo gets a clear answer. */
export function idArg(kind: IdKind, text: string | undefined, command: string): string {
  const id = (text ?? '').trim();
  if (!idPattern(kind).test(id)) throw new UsageError(`"${text ?? ''}" is not a ${kind} id (they look like ${kind}_0k2m...)`, command);
  return id;
}

/** A 404 about a thing (not a missing route) said with the thing's id. */
export async function naming<T>(what: string, id: string, call: Promise<T>): Promise<T> {
  try {
    return await call;
  } catch (err) {
    if (err instanceof ApiRequestError && err.problem?.code === 'not_found') {
      throw new CliError(`${what} ${id} not found (or it is not yours)`);
    }
    throw err;
  }
}

export const getJob = (api: ApiClient, id: string, signal?: AbortSignal) =>
  naming('job', id, api.get(`/v1/jobs/${id}`, Job, signal ? { signal } : undefined));

/** Turns a non-2xx raw response into the same error ApiClient.request throws. */
export async function expectOk(res: Response): Promise<Response> {
  if (res.ok) return res;
  const text = await res.text().catch(() => '');
  let problem: Partial<Problem> | null = null;
  try {
    const parsed = JSON.parse(text) as unknown;
    if (parsed && typeof parsed === 'object') problem = parsed as Partial<Problem>;
  } catch {
    /* not JSON */
  }
  throw new ApiRequestError(res.status, problem, problem?.detail ?? problem?.title ?? `HTTP ${res.status}`);
}

/** Reads every page of a list endpoint, up to limit items. */
export async function listAll<S extends z.ZodType>(api: ApiClient, path: string, item: S, query: Record<string, string | undefined>, limit: number): Promise<z.output<S>[]> {
  const items: z.output<S>[] = [];
  const Page = pageOf(item);
  let cursor: string | null = null;
  do {
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(query)) if (v !== undefined) q.set(k, v);
    q.set('limit', String(Math.min(200, limit - items.length)));
    if (cursor) q.set('cursor', cursor);
    const page = await api.get(`${path}?${q}`, Page);
    items.push(...page.items);
    cursor = page.nextCursor ?? null;
  } while (cursor && items.length < limit);
  return items;
}

export interface ServerSentEvent {
  event: string;
  data: string;
  id?: string;
}

/**
 * Parses a text/event-stream body with eventsource-parser (a line ending split across chunks,
 * `\r` in one and `\n` in the next, is one line ending). An event without a type is a
 * `message`, and the last id seen stays the event's id, as the spec's last event ID buffer does.
 */
export async function* serverSentEvents(body: ReadableStream<Uint8Array>): AsyncGenerator<ServerSentEvent> {
  const decoder = new TextDecoder();
  let ready: ServerSentEvent[] = [];
  let lastId: string | undefined;
  const parser = createParser({
    onEvent(m) {
      if (m.id !== undefined) lastId = m.id;
      ready.push({ event: m.event ?? 'message', data: m.data, ...(lastId !== undefined ? { id: lastId } : {}) });
    },
  });
  for await (const chunk of body as unknown as AsyncIterable<Uint8Array>) {
    parser.feed(decoder.decode(chunk, { stream: true }));
    const out = ready;
    ready = [];
    yield* out;
  }
}
