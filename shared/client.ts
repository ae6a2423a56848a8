import { z } from 'zod';
import type { Problem } from './errors.ts';

/** An API answer that was not a success, with the problem body the coordinator sent. */
export class ApiRequestError extends Error {
  constructor(
    readonly status: number,
    readonly problem: Partial<Problem> | null,
    message: string,
    /** A 503's Retry-After, in seconds: the coordinator is up and says when to come back. */
    readonly retryAfterSeconds: number | null = null,
  ) {
    super(message);
  }
}

/** A success answer that is not the shape the shared schema says (a coordinator of another version, a proxy's page). */
export class MalformedAnswerError extends Error {
  constructor(
    readonly method: string,
    readonly path: string,
    readonly issues: string,
  ) {
    super(`the coordinator's answer to ${method} ${path.split('?')[0]} is not what this client expects (${issues})`);
  }
}

/** The first few zod issues on one line: "items.0.status: Invalid option; nextCursor: Required". */
function describeIssues(error: z.ZodError): string {
  const shown = error.issues.slice(0, 3).map((i) => `${i.path.length ? `${i.path.join('.')}: ` : ''}${i.message}`.replace(/\s+/g, ' '));
  return shown.join('; ') + (error.issues.length > 3 ? `; and ${error.issues.length - 3} more` : '');
}

/** The answer of a route that answers 204. */
export const NoContent = z.null();

type Init = { headers?: Record<string, string>; signal?: AbortSignal; timeoutMs?: number };
const isSchema = (x: unknown): x is z.ZodType => typeof x === 'object' && x !== null && typeof (x as z.ZodType).safeParse === 'function';

/** The coordinator could not be reached at all. */
export class UnreachableError extends Error {}

export interface ClientOptions {
  baseUrl: string;
  /** An API key, or a function giving the Authorization token (the agent's signed JWT). */
  token?: string | (() => Promise<string> | string);
  timeoutMs?: number;
  fetch?: typeof fetch;
  /** Every answer, with the local times its request left and it came (the agent reads the coordinator's clock from it). */
  onResponse?: (res: Response, sentAtMs: number, receivedAtMs: number) => void;
}

/** A small fetch wrapper shared by the CLI, the agent and the tests: JSON in, JSON out, problems as errors. */
export class ApiClient {
  constructor(readonly opts: ClientOptions) {}

  async raw(method: string, path: string, init: { body?: BodyInit; headers?: Record<string, string>; signal?: AbortSignal; timeoutMs?: number } = {}): Promise<Response> {
    const headers: Record<string, string> = { ...init.headers };
    const token = typeof this.opts.token === 'function' ? await this.opts.token() : this.opts.token;
    if (token) headers.authorization = `Bearer ${token}`;
    const timeout = AbortSignal.timeout(init.timeoutMs ?? this.opts.timeoutMs ?? 30_000);
    const signal = init.signal ? AbortSignal.any([init.signal, timeout]) : timeout;
    try {
      const sentAt = Date.now();
      const res = await (this.opts.fetch ?? fetch)(new URL(path, this.opts.baseUrl), { method, headers, body: init.body, signal });
      this.opts.onResponse?.(res, sentAt, Date.now());
      return res;
    } catch (err) {
      if (init.signal?.aborted) throw err;
      const cause = (err as { cause?: { code?: string; message?: string } }).cause;
      const why = timeout.aborted ? 'timed out' : (cause?.code ?? cause?.message ?? String(err));
      throw new UnreachableError(`cannot reach the coordinator at ${this.opts.baseUrl} (${why})`);
    }
  }

  /**
   * One JSON call. With a schema (the shared one the route answers with), the answer is parsed
   * with it and typed by it: a malformed answer is a MalformedAnswerError, never a cast.
   */
  async request<S extends z.ZodType>(method: string, path: string, body: unknown, schema: S, init?: Init): Promise<z.output<S>>;
  /** Unchecked: the caller reads what it probes (tests of the API itself). */
  async request<T = unknown>(method: string, path: string, body?: unknown, init?: Init): Promise<T>;
  async request(method: string, path: string, body?: unknown, schemaOrInit?: z.ZodType | Init, maybeInit?: Init): Promise<unknown> {
    const schema = isSchema(schemaOrInit) ? schemaOrInit : undefined;
    const init = (isSchema(schemaOrInit) ? maybeInit : schemaOrInit) ?? {};
    const headers: Record<string, string> = { accept: 'application/json', ...init.headers };
    if (body !== undefined) headers['content-type'] = 'application/json';
    const res = await this.raw(method, path, {
      ...init,
      headers,
      ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
    });
    const text = await res.text();
    const parsed = text ? safeJson(text) : null;
    if (!res.ok) {
      const problem = parsed && typeof parsed === 'object' ? (parsed as Partial<Problem>) : null;
      const detail = problem?.detail ?? problem?.title ?? `HTTP ${res.status}`;
      const retryAfter = Number(res.headers.get('retry-after') ?? Number.NaN);
      throw new ApiRequestError(res.status, problem, detail, Number.isFinite(retryAfter) && retryAfter >= 0 ? retryAfter : null);
    }
    if (!schema) return parsed;
    const checked = schema.safeParse(parsed);
    if (!checked.success) throw new MalformedAnswerError(method, path, describeIssues(checked.error));
    return checked.data;
  }

  get<S extends z.ZodType>(path: string, schema: S, init?: Init): Promise<z.output<S>>;
  get<T = unknown>(path: string, init?: Init): Promise<T>;
  get(path: string, schemaOrInit?: z.ZodType | Init, init?: Init): Promise<unknown> {
    return isSchema(schemaOrInit) ? this.request('GET', path, undefined, schemaOrInit, init) : this.request('GET', path, undefined, schemaOrInit);
  }

  post<S extends z.ZodType>(path: string, body: unknown, schema: S, init?: Init): Promise<z.output<S>>;
  post<T = unknown>(path: string, body?: unknown, init?: Init): Promise<T>;
  post(path: string, body?: unknown, schemaOrInit?: z.ZodType | Init, init?: Init): Promise<unknown> {
    return isSchema(schemaOrInit) ? this.request('POST', path, body ?? {}, schemaOrInit, init) : this.request('POST', path, body ?? {}, schemaOrInit);
  }

  patch<S extends z.ZodType>(path: string, body: unknown, schema: S): Promise<z.output<S>>;
  patch<T = unknown>(path: string, body: unknown): Promise<T>;
  patch(path: string, body: unknown, schema?: z.ZodType): Promise<unknown> {
    return schema ? this.request('PATCH', path, body, schema) : this.request('PATCH', path, body);
  }

  delete<S extends z.ZodType>(path: string, schema: S): Promise<z.output<S>>;
  delete<T = unknown>(path: string): Promise<T>;
  delete(path: string, schema?: z.ZodType): Promise<unknown> {
    return schema ? this.request('DELETE', path, undefined, schema) : this.request('DELETE', path);
  }
}

function safeJson(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return text;
  }
}
