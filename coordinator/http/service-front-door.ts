import { randomUUID } from 'node:crypto';
import { request as httpRequest, type IncomingHttpHeaders, type IncomingMessage, type OutgoingHttpHeaders, type ServerResponse } from 'node:http';
import { request as httpsRequest } from 'node:https';
import type { ClientHttp2Stream, IncomingHttpHeaders as H2Headers, OutgoingHttpHeaders as H2OutgoingHeaders } from 'node:http2';
import type { Duplex } from 'node:stream';
import type { ErrorCode } from '../../shared/errors.ts';
import { isTerminal } from '../../shared/jobs.ts';
import { serviceTokenCookie, serviceTokenQueryParam, tunnelJobHeader } from '../../shared/services.ts';
import type { KeyVerifier } from '../auth/api-keys.ts';
import type { AppDeps } from '../deps.ts';
import { ApiError } from '../errors.ts';
import { problemBody } from './problem.ts';
import type { Logger } from '../log.ts';
import type { Metrics } from '../metrics/registry.ts';
import type { ServiceDirectory, ServiceEntry } from '../services/directory.ts';
import { isServiceToken, type ServiceTokenVerifier } from '../services/tokens.ts';
import { replicaTokenHeader, type Replicas } from '../services/replicas.ts';
import type { RequestCounts } from '../services/request-counts.ts';
import { cancelCode, type Tunnels } from '../services/tunnels.ts';
import type { ServiceUrls } from '../services/urls.ts';

// The front door of service jobs: a request whose Host names a job is authenticated here, its
// credential removed, and forwarded over the node's tunnel (an HTTP/2 stream per request) to the
// job's port; the answer comes back chunk by chunk. Nothing here buffers a body.

/** What a client is told to wait while a service starts (seconds). */
const startingRetryAfterSeconds = 5;
/** What a client is told to wait while the node's agent is not connected (seconds). */
const tunnelRetryAfterSeconds = 2;
/** How often a long exchange checks that its credential still holds (expiry; revocation ends it at once). */
const recheckEveryMs = 10_000;

/** Connection-level headers (RFC 9110 7.6.1, RFC 9113 8.2.2): never forwarded either way. */
const hopByHop = new Set([
  'connection',
  'keep-alive',
  'proxy-connection',
  'transfer-encoding',
  'upgrade',
  'te',
  'trailer',
  'host',
  'http2-settings',
]);
/** Gantry's own request headers: never taken from a client, never passed to a job. */
const internalHeaders = new Set([tunnelJobHeader, replicaTokenHeader, 'x-gantry-upgrade']);

export interface FrontDoorDeps {
  urls: () => ServiceUrls;
  directory: ServiceDirectory;
  tunnels: Tunnels;
  replicas: Replicas;
  keys: KeyVerifier;
  tokens: ServiceTokenVerifier;
  counts: RequestCounts;
  metrics: Metrics;
  log: Logger;
  bodyLimitBytes: number;
  idleTimeoutMs: number;
}

/** Who a request came as: the credential's id (revocation ends its exchanges) and how to check it again. */
interface Caller {
  credentialId: string | null;
  recheck: () => Promise<unknown>;
  /** The Authorization header held the credential: it is not forwarded. */
  fromAuthorization: boolean;
}

/** A request another replica forwarded: it authenticated the client, and its revocations end the exchange there. */
const trusted: Caller = { credentialId: null, recheck: async () => {}, fromAuthorization: false };

class Refusal extends Error {
  constructor(
    readonly code: ErrorCode,
    message: string,
    readonly retryAfterSeconds?: number,
  ) {
    super(message);
  }
}

/** The front door over the app's parts. */
export function serviceFrontDoor(deps: AppDeps): ServiceFrontDoor {
  const s = deps.services;
  return new ServiceFrontDoor({
    urls: () => s.urls,
    directory: s.directory,
    tunnels: s.tunnels,
    replicas: s.replicas,
    keys: deps.keys,
    tokens: s.tokens,
    counts: s.counts,
    metrics: deps.metrics,
    log: deps.log,
    bodyLimitBytes: deps.config.serviceBodyLimitBytes,
    idleTimeoutMs: deps.config.serviceIdleTimeoutMs,
  });
}

export class ServiceFrontDoor {
  /** Open exchanges by credential id: a revocation ends them at once. */
  private open = new Map<string, Set<() => void>>();
  private stops: (() => void)[] = [];

  constructor(private d: FrontDoorDeps) {
    const end = (id: string) => {
      for (const stop of this.open.get(id) ?? []) stop();
    };
    this.stops.push(d.keys.onRevoked(end), d.tokens.onRevoked(end));
  }

  /** The job a request is for, from its Host; null: not a service host (the API's own). */
  jobOf(req: IncomingMessage): string | null {
    return this.d.urls().jobOfHost(req.headers.host);
  }

  close(): void {
    for (const stop of this.stops) stop();
  }

  async handle(req: IncomingMessage, res: ServerResponse, jobId: string): Promise<void> {
    const started = performance.now();
    const requestId = randomUUID();
    try {
      const url = new URL(req.url ?? '/', 'http://service');
      const entry = await this.d.directory.lookup(jobId);
      if (!entry?.service) throw new Refusal('not_found', 'service not found');
      const traded = url.searchParams.get(serviceTokenQueryParam);
      if (traded !== null) return await this.tradeToken(res, entry, url, traded);
      const viaReplica = this.fromReplica(req, jobId);
      const caller = viaReplica ? trusted : await this.authenticate(req, entry);
      const way = await this.route(entry, viaReplica);
      const length = Number(req.headers['content-length'] ?? 0);
      if (length > this.d.bodyLimitBytes) throw new Refusal('payload_too_large', `the request body is over ${this.d.bodyLimitBytes} bytes`);
      if ('replica' in way) this.forwardToReplica(req, res, entry, caller, way.replica);
      else this.forward(req, res, entry, caller, way.session, started);
    } catch (err) {
      const refusal = asRefusal(err, this.d.log, requestId);
      writeProblem(res, refusal, requestId);
      this.count(jobId, res.statusCode);
    }
  }

  /** A WebSocket (or other) upgrade: the same checks, then bytes both ways over one HTTP/2 stream. */
  async handleUpgrade(req: IncomingMessage, socket: Duplex, head: Buffer, jobId: string): Promise<void> {
    const requestId = randomUUID();
    socket.on('error', () => {});
    try {
      const entry = await this.d.directory.lookup(jobId);
      if (!entry?.service) throw new Refusal('not_found', 'service not found');
      const viaReplica = this.fromReplica(req, jobId);
      const caller = viaReplica ? trusted : await this.authenticate(req, entry, true);
      const way = await this.route(entry, viaReplica);
      if ('replica' in way) return this.forwardUpgradeToReplica(req, socket, head, entry, caller, way.replica, requestId);
      const session = way.session;
      const headers = this.requestHeaders(req, entry, caller);
      headers['x-gantry-upgrade'] = String(req.headers.upgrade ?? '');
      // Not ended at once, as Node ends a GET's stream by default: the upgraded bytes go over it.
      const stream = session.request(headers, { endStream: false });
      const cancel = () => {
        if (!stream.closed) stream.close(cancelCode);
        socket.destroy();
      };
      const untrack = this.track(caller, cancel);
      socket.on('close', () => {
        untrack();
        if (!stream.closed) stream.close(cancelCode);
      });
      stream.on('error', () => socket.destroy());
      stream.on('response', (h) => {
        const upgraded = h['x-gantry-upgrade-status'] === '101';
        const status = upgraded ? 101 : Number(h[':status']);
        const lines = [`HTTP/1.1 ${status} ${upgraded ? 'Switching Protocols' : 'Upgrade refused'}`];
        for (const [name, value] of Object.entries(responseHeaders(h, upgraded))) {
          for (const v of Array.isArray(value) ? value : [value]) lines.push(`${name}: ${String(v)}`);
        }
        if (upgraded) lines.push('connection: Upgrade', `upgrade: ${String(h['x-gantry-upgrade-protocol'] ?? req.headers.upgrade)}`);
        else lines.push('connection: close');
        socket.write(`${lines.join('\r\n')}\r\n\r\n`);
        stream.pipe(socket);
        if (upgraded) {
          if (head.length) stream.write(head);
          socket.pipe(stream);
        }
      });
      stream.setTimeout(this.d.idleTimeoutMs, cancel);
    } catch (err) {
      refuseUpgrade(socket, asRefusal(err, this.d.log, requestId), requestId);
    }
  }

  /**
   * An upgrade that reached a replica without the node's tunnel: sent on to the replica that holds
   * it (the credential removed, a replica token instead), then bytes both ways between the two sockets.
   */
  private forwardUpgradeToReplica(req: IncomingMessage, socket: Duplex, head: Buffer, entry: ServiceEntry, caller: Caller, replicaUrl: string, requestId: string): void {
    const h2 = this.requestHeaders(req, entry, caller);
    const headers: OutgoingHttpHeaders = { host: req.headers.host ?? '', connection: 'Upgrade', upgrade: String(req.headers.upgrade ?? '') };
    for (const [name, value] of Object.entries(h2)) if (!name.startsWith(':') && name !== tunnelJobHeader && value !== undefined) headers[name] = value as string | string[];
    headers[replicaTokenHeader] = this.d.replicas.tokenFor(replicaUrl, entry.jobId);
    const target = new URL(String(h2[':path']), replicaUrl);
    const out = (target.protocol === 'https:' ? httpsRequest : httpRequest)(target, { method: req.method, headers });
    const untrack = this.track(caller, () => {
      out.destroy();
      socket.destroy();
    });
    socket.on('close', () => {
      untrack();
      out.destroy();
    });
    /** The status line and headers of the other replica's answer, as this socket's. */
    const answerHead = (status: number, text: string, from: IncomingHttpHeaders, keep: (name: string) => boolean, extra: string[] = []) => {
      const lines = [`HTTP/1.1 ${status} ${text}`];
      for (const [name, value] of Object.entries(from)) {
        if (value === undefined || !keep(name)) continue;
        for (const v of Array.isArray(value) ? value : [value]) lines.push(`${name}: ${v}`);
      }
      return `${[...lines, ...extra].join('\r\n')}\r\n\r\n`;
    };
    out.on('upgrade', (res, upstream, upstreamHead) => {
      socket.write(answerHead(101, 'Switching Protocols', res.headers, () => true));
      if (upstreamHead.length) socket.write(upstreamHead);
      if (head.length) upstream.write(head);
      upstream.on('error', () => socket.destroy());
      upstream.on('close', () => socket.destroy());
      socket.on('close', () => upstream.destroy());
      upstream.setTimeout(this.d.idleTimeoutMs, () => upstream.destroy());
      upstream.pipe(socket);
      socket.pipe(upstream);
    });
    // Refused there (not ready, gone, no tunnel any more): its answer, then the connection closes.
    out.on('response', (res) => {
      const hopByHop = new Set(['connection', 'transfer-encoding', 'keep-alive']);
      socket.write(answerHead(res.statusCode ?? 502, res.statusMessage ?? '', res.headers, (n) => !hopByHop.has(n), ['connection: close']));
      res.pipe(socket);
    });
    out.on('error', () => refuseUpgrade(socket, new Refusal('unavailable', 'the coordinator that holds the node did not answer', tunnelRetryAfterSeconds), requestId));
    out.end();
  }

  /** `?gantry_token=` on a browser's first visit: traded for an HttpOnly cookie on this host, and a redirect without it. */
  private async tradeToken(res: ServerResponse, entry: ServiceEntry, url: URL, token: string): Promise<void> {
    if (!isServiceToken(token)) throw new Refusal('unauthenticated', `${serviceTokenQueryParam} takes a service token (gst_...)`);
    await this.d.tokens.verify(token, entry.jobId);
    url.searchParams.delete(serviceTokenQueryParam);
    const secure = this.d.urls().template.startsWith('https:') ? '; Secure' : '';
    res.writeHead(303, {
      location: `${url.pathname}${url.search}`,
      'set-cookie': `${serviceTokenCookie}=${token}; Path=/; HttpOnly; SameSite=Lax${secure}`,
      'cache-control': 'no-store',
      'content-length': '0',
    });
    res.end();
  }

  private async authenticate(req: IncomingMessage, entry: ServiceEntry, upgrade = false): Promise<Caller> {
    const authorization = req.headers.authorization;
    const bearer = authorization?.match(/^Bearer\s+(\S+)$/i)?.[1];
    const gantryBearer = bearer && (bearer.startsWith('gk_') || isServiceToken(bearer)) ? bearer : null;
    if (entry.service?.public) return { credentialId: null, recheck: async () => {}, fromAuthorization: gantryBearer !== null };
    const credential = gantryBearer ?? cookieOf(req.headers.cookie, serviceTokenCookie);
    if (!credential) throw new Refusal('unauthenticated', 'send an API key or a service token as "Authorization: Bearer <token>"');
    if (!gantryBearer) refuseCrossSite(req, upgrade);
    if (isServiceToken(credential)) {
      const tokenId = await this.d.tokens.verify(credential, entry.jobId);
      return { credentialId: tokenId, recheck: () => this.d.tokens.verify(credential, entry.jobId), fromAuthorization: gantryBearer !== null };
    }
    const check = async () => {
      const principal = await this.d.keys.verify(`Bearer ${credential}`);
      // Another tenant's job is answered as if it did not exist.
      if (principal.accountId !== entry.accountId) throw new Refusal('not_found', 'service not found');
      return principal;
    };
    const principal = await check();
    return { credentialId: principal.keyId, recheck: check, fromAuthorization: gantryBearer !== null };
  }

  /**
   * Whether another replica forwarded this request (it authenticated the client): its token must
   * name this replica and this job. A forged or stale one is refused.
   */
  private fromReplica(req: IncomingMessage, jobId: string): boolean {
    const token = req.headers[replicaTokenHeader];
    if (token === undefined) return false;
    if (typeof token === 'string' && this.d.replicas.accepts(token, jobId)) return true;
    throw new Refusal('unauthenticated', 'the replica token is not valid');
  }

  /** The session to the job's node, the replica that holds it, or why there is none yet (or any more). */
  private async route(entry: ServiceEntry, viaReplica: boolean): Promise<{ session: NonNullable<ReturnType<Tunnels['session']>> } | { replica: string }> {
    if (isTerminal(entry.status)) throw new Refusal('gone', `the service ended (its job is ${entry.status})`);
    const ready = entry.status === 'running' && entry.readyEpoch === entry.leaseEpoch;
    if (!ready || !entry.nodeId) throw new Refusal('unavailable', 'the service is starting; try again shortly', startingRetryAfterSeconds);
    const session = this.d.tunnels.session(entry.nodeId);
    if (session) return { session };
    // Forwarded once at most: a replica that was sent the request and lost the tunnel meanwhile says so.
    const replica = viaReplica ? null : await this.d.replicas.holderOf(entry.nodeId);
    if (replica) return { replica };
    throw new Refusal('unavailable', "the service's node is not connected; try again shortly", tunnelRetryAfterSeconds);
  }

  /** The request to the replica that holds the node's tunnel: the credential already removed, a replica token instead. */
  private forwardToReplica(req: IncomingMessage, res: ServerResponse, entry: ServiceEntry, caller: Caller, replicaUrl: string): void {
    const h2 = this.requestHeaders(req, entry, caller);
    const headers: OutgoingHttpHeaders = { host: req.headers.host ?? '' };
    for (const [name, value] of Object.entries(h2)) if (!name.startsWith(':') && name !== tunnelJobHeader && value !== undefined) headers[name] = value as string | string[];
    headers[replicaTokenHeader] = this.d.replicas.tokenFor(replicaUrl, entry.jobId);
    if (req.headers['content-length'] !== undefined) headers['content-length'] = req.headers['content-length'];
    else if (req.headers['transfer-encoding'] !== undefined) headers['transfer-encoding'] = 'chunked';
    const target = new URL(String(h2[':path']), replicaUrl);
    const out = (target.protocol === 'https:' ? httpsRequest : httpRequest)(target, { method: req.method, headers });
    let bytesIn = 0;
    let done = false;
    const finish = () => {
      if (done) return;
      done = true;
      untrack();
      this.count(entry.jobId, res.statusCode);
    };
    const fail = (refusal: Refusal) => {
      out.destroy();
      if (res.headersSent) res.destroy();
      else writeProblem(res, refusal, randomUUID());
      finish();
    };
    const untrack = this.track(caller, () => fail(new Refusal('unauthenticated', 'the credential was revoked')));
    req.on('data', (chunk: Buffer) => {
      bytesIn += chunk.length;
      if (bytesIn > this.d.bodyLimitBytes) {
        req.unpipe(out);
        res.setHeader('connection', 'close');
        fail(new Refusal('payload_too_large', `the request body is over ${this.d.bodyLimitBytes} bytes`));
      }
    });
    req.pipe(out);
    res.on('close', () => {
      if (!res.writableFinished) out.destroy();
      finish();
    });
    out.setTimeout(this.d.idleTimeoutMs, () => fail(new Refusal('unavailable', `the service sent nothing for ${this.d.idleTimeoutMs / 1000} s`)));
    out.on('error', () => fail(new Refusal('unavailable', 'the coordinator that holds the node did not answer')));
    out.on('response', (answer) => {
      try {
        res.writeHead(answer.statusCode ?? 502, responseHeaders(answer.headers as H2Headers, false) as OutgoingHttpHeaders);
      } catch {
        return fail(new Refusal('unavailable', "the service's answer has headers that cannot be passed on"));
      }
      if (answer.headers['content-length'] === undefined) res.flushHeaders();
      answer.pipe(res);
    });
  }

  private requestHeaders(req: IncomingMessage, entry: ServiceEntry, caller: Caller): H2OutgoingHeaders {
    const url = new URL(req.url ?? '/', 'http://service');
    url.searchParams.delete(serviceTokenQueryParam);
    const headers: H2OutgoingHeaders = {
      ':method': req.method ?? 'GET',
      ':path': `${url.pathname}${url.search}`,
      ':authority': req.headers.host ?? entry.jobId,
      ':scheme': 'http',
      [tunnelJobHeader]: entry.jobId,
    };
    const named = connectionNamed(req.headers);
    for (const [name, value] of Object.entries(req.headers)) {
      if (value === undefined || hopByHop.has(name) || named.has(name) || name.startsWith(':') || internalHeaders.has(name)) continue;
      if (name === 'authorization' && caller.fromAuthorization) continue;
      if (name === 'cookie') {
        const kept = withoutCookie(Array.isArray(value) ? value.join('; ') : value, serviceTokenCookie);
        if (kept) headers.cookie = kept;
        continue;
      }
      headers[name] = value;
    }
    const forwardedFor = req.headers['x-forwarded-for'];
    headers['x-forwarded-for'] = [forwardedFor, req.socket.remoteAddress].filter(Boolean).join(', ');
    headers['x-forwarded-host'] = req.headers.host ?? '';
    headers['x-forwarded-proto'] = this.d.urls().template.startsWith('https:') ? 'https' : 'http';
    return headers;
  }

  private forward(
    req: IncomingMessage,
    res: ServerResponse,
    entry: ServiceEntry,
    caller: Caller,
    session: NonNullable<ReturnType<Tunnels['session']>>,
    started: number,
  ): void {
    const jobId = entry.jobId;
    const hasBody = req.headers['content-length'] !== undefined ? req.headers['content-length'] !== '0' : req.headers['transfer-encoding'] !== undefined;
    const stream: ClientHttp2Stream = session.request(this.requestHeaders(req, entry, caller), { endStream: !hasBody });
    let bytesIn = 0;
    let bytesOut = 0;
    let done = false;
    const finish = () => {
      if (done) return;
      done = true;
      untrack();
      clearInterval(recheck);
      this.count(jobId, res.statusCode);
      // Sent to the job by this replica: it counts toward the job's request rate here, once.
      this.d.counts.count(jobId);
      if (bytesIn) this.d.metrics.serviceBytes.inc({ job: jobId, direction: 'in' }, bytesIn);
      if (bytesOut) this.d.metrics.serviceBytes.inc({ job: jobId, direction: 'out' }, bytesOut);
    };
    const fail = (refusal: Refusal) => {
      if (!stream.closed) stream.close(cancelCode);
      if (res.headersSent) res.destroy();
      else writeProblem(res, refusal, randomUUID());
      finish();
    };
    const untrack = this.track(caller, () => fail(new Refusal('unauthenticated', 'the credential was revoked')));
    const recheck = setInterval(() => {
      caller.recheck().catch((err) => fail(asRefusal(err, this.d.log, '')));
    }, recheckEveryMs).unref();

    if (hasBody) {
      req.on('data', (chunk: Buffer) => {
        bytesIn += chunk.length;
        if (bytesIn > this.d.bodyLimitBytes) {
          req.unpipe(stream);
          res.setHeader('connection', 'close');
          fail(new Refusal('payload_too_large', `the request body is over ${this.d.bodyLimitBytes} bytes`));
        }
      });
      req.pipe(stream);
    }
    // The client went away: the job's side of the request is cancelled at once.
    res.on('close', () => {
      if (!res.writableFinished && !stream.closed) stream.close(cancelCode);
      finish();
    });
    stream.setTimeout(this.d.idleTimeoutMs, () => fail(new Refusal('unavailable', `the service sent nothing for ${this.d.idleTimeoutMs / 1000} s`)));
    stream.on('error', () => fail(new Refusal('unavailable', "the service's node did not answer")));
    stream.on('response', (h) => {
      this.d.metrics.serviceLatency.observe({ job: jobId }, (performance.now() - started) / 1000);
      try {
        res.writeHead(Number(h[':status']), responseHeaders(h, false) as OutgoingHttpHeaders);
      } catch {
        return fail(new Refusal('unavailable', "the service's answer has headers that cannot be passed on"));
      }
      // An answer of unknown length (an event stream) shows its headers now, before its first
      // event; a sized one goes out with its first bytes (one write, not two).
      if (h['content-length'] === undefined) res.flushHeaders();
      stream.on('data', (chunk: Buffer) => (bytesOut += chunk.length));
      stream.pipe(res);
    });
  }

  private track(caller: Caller, stop: () => void): () => void {
    const id = caller.credentialId;
    if (!id) return () => {};
    let set = this.open.get(id);
    if (!set) this.open.set(id, (set = new Set()));
    set.add(stop);
    return () => {
      set.delete(stop);
      if (!set.size) this.open.delete(id);
    };
  }

  private count(jobId: string, status: number) {
    this.d.metrics.serviceRequests.inc({ job: jobId, status: `${Math.floor(status / 100)}xx` });
  }
}

/** The job's answer headers as a client may see them: no service worker scope, no cookie set past this host. */
function responseHeaders(h: H2Headers, upgraded: boolean): Record<string, string | string[]> {
  const out: Record<string, string | string[]> = {};
  for (const [name, value] of Object.entries(h)) {
    if (value === undefined || name.startsWith(':') || hopByHop.has(name) || name.startsWith('x-gantry-upgrade')) continue;
    if (name === 'service-worker-allowed') continue;
    if (name === 'set-cookie') {
      const kept = (Array.isArray(value) ? value : [value]).filter((c) => !/;\s*domain\s*=/i.test(c) && !c.trimStart().startsWith(`${serviceTokenCookie}=`));
      if (kept.length) out[name] = kept;
      continue;
    }
    if (upgraded && name === 'content-length') continue;
    out[name] = value;
  }
  return out;
}

function connectionNamed(headers: IncomingHttpHeaders): Set<string> {
  const c = headers.connection;
  return new Set((c ?? '').split(',').map((s) => s.trim().toLowerCase()).filter(Boolean));
}

/**
 * The cookie travels with every request a browser makes to the service's host, including those
 * another site's page starts (sibling service hosts are the same site): a request that changes
 * something, or opens a WebSocket, with the cookie must come from the service's own origin.
 */
function refuseCrossSite(req: IncomingMessage, upgrade: boolean): void {
  const method = req.method ?? 'GET';
  if (!upgrade && (method === 'GET' || method === 'HEAD' || method === 'OPTIONS')) return;
  const origin = req.headers.origin;
  const site = req.headers['sec-fetch-site'];
  let sameOrigin = true;
  if (origin !== undefined) {
    try {
      sameOrigin = new URL(origin).host === req.headers.host;
    } catch {
      sameOrigin = false;
    }
  }
  if (!sameOrigin || (site !== undefined && site !== 'same-origin' && site !== 'none')) {
    throw new Refusal('forbidden', 'a request from another site may not use the service cookie; send the token as "Authorization: Bearer <token>"');
  }
}

function cookieOf(header: string | undefined, name: string): string | null {
  if (!header) return null;
  for (const part of header.split(';')) {
    const i = part.indexOf('=');
    if (i > 0 && part.slice(0, i).trim() === name) return part.slice(i + 1).trim();
  }
  return null;
}

function withoutCookie(header: string, name: string): string {
  return header
    .split(';')
    .map((p) => p.trim())
    .filter((p) => p && p.split('=')[0]!.trim() !== name)
    .join('; ');
}

/** An upgrade refused: its problem+json as a plain HTTP/1.1 answer on the raw socket, which then closes. */
function refuseUpgrade(socket: Duplex, refusal: Refusal, requestId: string): void {
  if (socket.destroyed) return;
  const problem = problemBody(refusal.code, refusal.message, requestId);
  const body = JSON.stringify(problem);
  socket.end(
    `HTTP/1.1 ${problem.status} ${problem.title}\r\ncontent-type: application/problem+json\r\ncontent-length: ${Buffer.byteLength(body)}\r\n` +
      `${refusal.retryAfterSeconds ? `retry-after: ${refusal.retryAfterSeconds}\r\n` : ''}connection: close\r\n\r\n${body}`,
  );
}

function asRefusal(err: unknown, log: Logger, requestId: string): Refusal {
  if (err instanceof Refusal) return err;
  if (err instanceof ApiError) return new Refusal(err.code, err.message, err.extra?.retryAfterSeconds);
  log.error('service request failed', { requestId, error: err instanceof Error ? err.message : String(err) });
  return new Refusal('internal', `internal error (request ${requestId})`);
}

function writeProblem(res: ServerResponse, refusal: Refusal, requestId: string): void {
  if (res.headersSent) {
    res.destroy();
    return;
  }
  const body = JSON.stringify(problemBody(refusal.code, refusal.message, requestId));
  const headers: OutgoingHttpHeaders = {
    'content-type': 'application/problem+json',
    'content-length': Buffer.byteLength(body),
    'x-request-id': requestId,
    'cache-control': 'no-store',
  };
  if (refusal.code === 'unauthenticated') headers['www-authenticate'] = 'Bearer';
  if (refusal.retryAfterSeconds !== undefined) headers['retry-after'] = String(refusal.retryAfterSeconds);
  if (refusal.code === 'payload_too_large') headers.connection = 'close';
  res.writeHead(problemBody(refusal.code, '').status, headers);
  res.end(body);
}
