import type { Problem } from './errors.ts';

/** An API answer that was not a success, with the problem body the coordinator sent. */
export class ApiRequestError extends Error {
  constructor(
    readonly status: number,
    readonly problem: Partial<Problem> | null,
    message: string,
  ) {
    super(message);
  }
}

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

  async request<T = unknown>(
    method: string,
    path: string,
    body?: unknown,
    init: { headers?: Record<string, string>; signal?: AbortSignal; timeoutMs?: number } = {},
  ): Promise<T> {
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
      throw new ApiRequestError(res.status, problem, detail);
    }
    return parsed as T;
  }

  get = <T = unknown>(path: string, init?: { signal?: AbortSignal; timeoutMs?: number }) => this.request<T>('GET', path, undefined, init);
  post = <T = unknown>(path: string, body?: unknown, init?: { headers?: Record<string, string> }) => this.request<T>('POST', path, body ?? {}, init);
  patch = <T = unknown>(path: string, body: unknown) => this.request<T>('PATCH', path, body);
  delete = <T = unknown>(path: string) => this.request<T>('DELETE', path);
}

function safeJson(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return text;
  }
}
