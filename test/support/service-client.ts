import { request, type IncomingHttpHeaders } from 'node:http';
import type { LookupFunction } from 'node:net';

// Requests to a service job's own origin (http://job_….localhost:PORT): the name is sent as the
// Host, while the connection goes to loopback (not every resolver maps *.localhost there).

/** A lookup that answers loopback for any name (for ws and http clients). */
export const loopback: LookupFunction = (_host, opts, cb) => {
  if ((opts as { all?: boolean }).all) (cb as unknown as (e: null, a: { address: string; family: number }[]) => void)(null, [{ address: '127.0.0.1', family: 4 }]);
  else cb(null, '127.0.0.1', 4);
};

export interface ServiceAnswer {
  status: number;
  headers: IncomingHttpHeaders;
  body: string;
}

/** One request to a service URL; resolves with the whole answer. */
export function serviceFetch(
  url: string,
  init: { method?: string; headers?: Record<string, string>; body?: string | Buffer; signal?: AbortSignal } = {},
): Promise<ServiceAnswer> {
  return new Promise((resolve, reject) => {
    const req = serviceRequest(url, init);
    req.on('response', (res) => {
      const parts: Buffer[] = [];
      res.on('data', (c: Buffer) => parts.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(parts).toString() }));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end(init.body);
  });
}

/** The raw request, for tests that stream either way (end it yourself). */
export function serviceRequest(url: string, init: { method?: string; headers?: Record<string, string>; signal?: AbortSignal; agent?: import('node:http').Agent } = {}) {
  return request(url, {
    method: init.method ?? 'GET',
    headers: init.headers ?? {},
    lookup: loopback,
    ...(init.signal ? { signal: init.signal } : {}),
    ...(init.agent ? { agent: init.agent } : {}),
  });
}
