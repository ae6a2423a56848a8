import type { ApiClient } from '../shared/client.ts';
import { ApiRequestError } from '../shared/client.ts';
import type { Problem } from '../shared/errors.ts';
import { idPattern, type IdKind } from '../shared/ids.ts';
import type { Job } from '../shared/jobs.ts';
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
  naming('job', id, api.get<Job>(`/v1/jobs/${id}`, signal ? { signal } : undefined));

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
export async function listAll<T>(api: ApiClient, path: string, query: Record<string, string | undefined>, limit: number): Promise<T[]> {
  const items: T[] = [];
  let cursor: string | null = null;
  do {
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(query)) if (v !== undefined) q.set(k, v);
    q.set('limit', String(Math.min(200, limit - items.length)));
    if (cursor) q.set('cursor', cursor);
    const page: { items: T[]; nextCursor?: string | null } = await api.get(`${path}?${q}`);
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

/** Parses a text/event-stream body (https://html.spec.whatwg.org/multipage/server-sent-events.html). */
export async function* serverSentEvents(body: ReadableStream<Uint8Array>): AsyncGenerator<ServerSentEvent> {
  const decoder = new TextDecoder();
  let buffer = '';
  let event = '';
  let data: string[] = [];
  let id: string | undefined;
  for await (const chunk of body as unknown as AsyncIterable<Uint8Array>) {
    buffer += decoder.decode(chunk, { stream: true });
    let nl: number;
    while ((nl = buffer.search(/\r\n|\r|\n/)) >= 0) {
      const line = buffer.slice(0, nl);
      buffer = buffer.slice(nl + (buffer.startsWith('\r\n', nl) ? 2 : 1));
      if (line === '') {
        if (data.length) yield { event: event || 'message', data: data.join('\n'), ...(id !== undefined ? { id } : {}) };
        event = '';
        data = [];
        continue;
      }
      if (line.startsWith(':')) continue;
      const colon = line.indexOf(':');
      const field = colon < 0 ? line : line.slice(0, colon);
      const value = colon < 0 ? '' : line.slice(colon + 1).replace(/^ /, '');
      if (field === 'event') event = value;
      else if (field === 'data') data.push(value);
      else if (field === 'id') id = value;
    }
  }
}
