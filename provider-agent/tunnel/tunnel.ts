import { Agent, request as httpRequest, type IncomingHttpHeaders, type OutgoingHttpHeaders } from 'node:http';
import { constants, createServer, type Http2Server, type IncomingHttpHeaders as H2Headers, type ServerHttp2Stream } from 'node:http2';
import { setTimeout as sleep } from 'node:timers/promises';
import { WebSocket } from 'ws';
import { tunnelStream } from '../../shared/tunnel-stream.ts';
import { Backoff } from '../../shared/backoff.ts';
import { agentTunnelPath, tunnelJobHeader } from '../../shared/services.ts';

// The agent's end of the service tunnel: one outbound WebSocket to the coordinator (providers sit
// behind NAT; nothing is published on the host), over which the coordinator runs an HTTP/2
// session as the client and this agent serves it. Each HTTP/2 stream is one request to a service
// job's port inside the node, reached through the job's own network.

/** Where a service job listens inside the node: its container's address on the jobs network, or loopback (process runtime). */
export interface ServiceAddress {
  host: string;
  port: number;
}

/** Hop-by-hop headers (RFC 9110 7.6.1): never passed along. */
const hopByHop = new Set(['connection', 'keep-alive', 'proxy-connection', 'transfer-encoding', 'upgrade', 'te', 'trailer', 'host', 'http2-settings']);
/** HTTP/2 windows of the agent's side: what a slow client's stream may hold before the job is paused. */
const streamWindowBytes = 1024 * 1024;
const sessionWindowBytes = 16 * 1024 * 1024;
/** How long a job's answer may hold its headers back waiting for its first bytes. */
const headersAloneMs = 5;
/** A connection that lasted this long resets the reconnect backoff. */
const stableAfterMs = 10_000;

export interface TunnelOptions {
  coordinatorUrl: string;
  token: () => Promise<string>;
  log: (line: string) => void;
  /** Reconnect waits (shared/backoff.ts). */
  backoff?: { initialMs: number; maxMs: number };
}

/** The services this node runs, by job id, and the one tunnel that reaches them. */
export class ServiceTunnel {
  private services = new Map<string, ServiceAddress>();
  private server: Http2Server;
  private upstream = new Agent({ keepAlive: true, maxSockets: 256, maxFreeSockets: 64 });
  private ws: WebSocket | null = null;
  private stopped = new AbortController();
  private loop: Promise<void> | null = null;
  private connectedListeners = new Set<(up: boolean) => void>();
  connected = false;

  constructor(private o: TunnelOptions) {
    this.server = createServer({ settings: { initialWindowSize: streamWindowBytes, enablePush: false } });
    this.server.on('session', (session) => {
      session.on('connect', () => session.setLocalWindowSize(sessionWindowBytes));
      session.on('error', () => {});
    });
    this.server.on('stream', (stream, headers) => this.serve(stream, headers));
  }

  /** A service job runs here now (its process started), reachable at this address. */
  add(jobId: string, address: ServiceAddress): void {
    this.services.set(jobId, address);
  }

  remove(jobId: string): void {
    this.services.delete(jobId);
  }

  onConnected(fn: (up: boolean) => void): () => void {
    this.connectedListeners.add(fn);
    return () => this.connectedListeners.delete(fn);
  }

  /** Keeps the tunnel open until stop(), reconnecting with backoff. */
  start(): void {
    this.loop ??= this.run();
  }

  async stop(): Promise<void> {
    this.stopped.abort();
    this.ws?.close(1001, 'agent stopping');
    await this.loop;
    this.upstream.destroy();
  }

  private async run(): Promise<void> {
    const backoff = new Backoff(this.o.backoff ?? { initialMs: 500, maxMs: 30_000 });
    while (!this.stopped.signal.aborted) {
      const opened = Date.now();
      const why = await this.connectOnce().catch((err: Error) => err.message);
      if (this.stopped.signal.aborted) break;
      if (Date.now() - opened > stableAfterMs) backoff.reset();
      const wait = backoff.next();
      // One line per outage, not one per try (the heartbeat says how the coordinator is doing).
      if (backoff.failures === 1) this.o.log(`service tunnel closed (${why}); reconnecting with backoff`);
      await sleep(wait, undefined, { signal: this.stopped.signal }).catch(() => {});
    }
  }

  /** One connection's life: resolves with why it ended. */
  private async connectOnce(): Promise<string> {
    const url = new URL(agentTunnelPath, this.o.coordinatorUrl);
    url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
    const ws = new WebSocket(url, { headers: { authorization: `Bearer ${await this.o.token()}` }, perMessageDeflate: false, maxPayload: 4 * 1024 * 1024, handshakeTimeout: 15_000 });
    this.ws = ws;
    // Made before `open`: frames that come with the upgrade's answer would be lost otherwise.
    const duplex = tunnelStream(ws);
    return new Promise<string>((resolve) => {
      let reason = 'closed';
      ws.on('unexpected-response', (_req, res) => {
        reason = `the coordinator answered ${res.statusCode}`;
        res.resume();
        ws.terminate();
      });
      ws.on('error', (err) => (reason = err.message));
      ws.on('open', () => {
        this.setConnected(true);
        this.o.log('service tunnel open');
        this.server.emit('connection', duplex);
      });
      ws.on('close', (code, text) => {
        if (this.connected) reason = `code ${code}${text.length ? ` ${text.toString()}` : ''}`;
        this.setConnected(false);
        duplex.destroy();
        resolve(reason);
      });
    });
  }

  private setConnected(up: boolean) {
    if (this.connected === up) return;
    this.connected = up;
    for (const fn of this.connectedListeners) fn(up);
  }

  private serve(stream: ServerHttp2Stream, h: H2Headers): void {
    stream.on('error', () => {});
    const jobId = String(h[tunnelJobHeader] ?? '');
    const address = this.services.get(jobId);
    if (!address) return answer(stream, 502, `this node runs no service for ${jobId || 'that job'} now`);
    const upgrade = h['x-gantry-upgrade'] ? String(h['x-gantry-upgrade']) : null;
    const headers: OutgoingHttpHeaders = { host: String(h[':authority'] ?? `${address.host}:${address.port}`) };
    for (const [name, value] of Object.entries(h)) {
      if (value === undefined || name.startsWith(':') || hopByHop.has(name) || name === tunnelJobHeader || name.startsWith('x-gantry-upgrade')) continue;
      headers[name] = value;
    }
    if (upgrade) Object.assign(headers, { connection: 'Upgrade', upgrade });
    const req = httpRequest({
      host: address.host,
      port: address.port,
      method: String(h[':method']),
      path: String(h[':path']),
      headers,
      ...(upgrade ? {} : { agent: this.upstream }),
    });
    req.on('error', (err) => {
      if (!stream.headersSent) answer(stream, 502, `the service did not answer: ${err.message}`);
      else stream.close(constants.NGHTTP2_INTERNAL_ERROR);
    });
    let answered = false;
    // The client went away (the coordinator cancelled the stream): so does the request to the job.
    stream.on('close', () => {
      if (!answered && !req.destroyed) req.destroy();
    });
    req.on('response', (res) => {
      if (stream.destroyed) return res.destroy();
      // The headers go with the first bytes of the body (or its end): HTTP/2 then sends them in one
      // write instead of one per frame, each waiting for the last. An answer that sends its headers
      // and then waits (an event stream) shows them after headersAloneMs.
      let responded = false;
      const respond = () => {
        if (responded || stream.destroyed) return;
        responded = true;
        clearTimeout(timer);
        try {
          stream.respond({ ':status': res.statusCode ?? 502, ...passable(res.headers) });
        } catch (err) {
          // Headers HTTP/2 cannot carry: the job's answer is refused, the agent goes on.
          res.destroy();
          answer(stream, 502, `the service's answer cannot be passed on: ${(err as Error).message}`);
        }
      };
      const timer = setTimeout(respond, headersAloneMs);
      res.on('data', (chunk: Buffer) => {
        respond();
        if (stream.destroyed || stream.writableEnded) return;
        if (!stream.write(chunk)) {
          res.pause();
          stream.once('drain', () => res.resume());
        }
      });
      res.on('end', () => {
        answered = true;
        respond();
        if (!stream.destroyed && !stream.writableEnded) stream.end();
      });
      res.on('error', () => {
        clearTimeout(timer);
        stream.close(constants.NGHTTP2_INTERNAL_ERROR);
      });
      stream.on('close', () => clearTimeout(timer));
    });
    req.on('upgrade', (res, socket, head) => {
      if (stream.destroyed) return socket.destroy();
      try {
        stream.respond({ ':status': 200, 'x-gantry-upgrade-status': '101', 'x-gantry-upgrade-protocol': String(res.headers.upgrade ?? upgrade), ...passable(res.headers) });
      } catch (err) {
        socket.destroy();
        return answer(stream, 502, `the service's answer cannot be passed on: ${(err as Error).message}`);
      }
      if (head.length) stream.write(head);
      socket.pipe(stream);
      stream.pipe(socket);
      socket.on('error', () => stream.close(constants.NGHTTP2_CANCEL));
      socket.on('close', () => stream.end());
      stream.on('close', () => socket.destroy());
    });
    if (upgrade) req.end();
    else stream.pipe(req);
  }
}

function passable(headers: IncomingHttpHeaders): Record<string, string | string[]> {
  const out: Record<string, string | string[]> = {};
  const named = new Set(String(headers.connection ?? '').split(',').map((s) => s.trim().toLowerCase()));
  for (const [name, value] of Object.entries(headers)) {
    if (value === undefined || hopByHop.has(name) || named.has(name)) continue;
    out[name] = value;
  }
  return out;
}

function answer(stream: ServerHttp2Stream, status: number, detail: string): void {
  if (stream.destroyed || stream.headersSent) return;
  const body = JSON.stringify({ type: 'urn:gantry:problem:unavailable', title: 'Bad gateway', status, detail, code: 'unavailable' });
  stream.respond({ ':status': status, 'content-type': 'application/problem+json', 'content-length': Buffer.byteLength(body) });
  stream.end(body);
}
