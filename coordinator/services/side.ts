import type { IncomingMessage } from 'node:http';
import type { Duplex } from 'node:stream';
import { WebSocketServer } from 'ws';
import { agentTunnelPath } from '../../shared/services.ts';
import type { KeyVerifier } from '../auth/api-keys.ts';
import type { Clock } from '../clock.ts';
import type { Config } from '../config.ts';
import type { Database } from '../db/open.ts';
import { ApiError } from '../errors.ts';
import type { Logger } from '../log.ts';
import type { Metrics } from '../metrics/registry.ts';
import type { AgentVerifier } from '../nodes/agent-auth.ts';
import { ServiceDirectory } from './directory.ts';
import { ServiceFrontDoor } from './proxy.ts';
import { ServiceTokenVerifier } from './tokens.ts';
import { Tunnels } from './tunnels.ts';
import { ServiceUrls } from './urls.ts';

/** Everything of service jobs on one coordinator: their URLs, tokens, the agents' tunnels and the front door. */
export class ServiceSide {
  readonly directory: ServiceDirectory;
  readonly tokens: ServiceTokenVerifier;
  readonly tunnels: Tunnels;
  readonly frontDoor: ServiceFrontDoor;
  private configured: ServiceUrls | null;
  private wss = new WebSocketServer({ noServer: true, maxPayload: 4 * 1024 * 1024, perMessageDeflate: false });

  constructor(
    private o: { config: Config; database: Database; clock: Clock; log: Logger; keys: KeyVerifier; agents: AgentVerifier; metrics: Metrics },
  ) {
    this.configured = o.config.servicesUrl ? new ServiceUrls(o.config.servicesUrl) : null;
    this.directory = new ServiceDirectory(o.database);
    this.tokens = new ServiceTokenVerifier(o.database, o.clock);
    this.tunnels = new Tunnels(o.log, (nodeId) =>
      o.agents.requireServing(nodeId).then(
        () => true,
        (err) => !(err instanceof ApiError),
      ),
    );
    this.frontDoor = new ServiceFrontDoor({
      urls: () => this.urls,
      directory: this.directory,
      tunnels: this.tunnels,
      keys: o.keys,
      tokens: this.tokens,
      metrics: o.metrics,
      log: o.log,
      bodyLimitBytes: o.config.serviceBodyLimitBytes,
      idleTimeoutMs: o.config.serviceIdleTimeoutMs,
    });
  }

  /** Where service jobs answer; the default names this listener's port, known once it listens. */
  get urls(): ServiceUrls {
    return (this.configured ??= ServiceUrls.localDefault(this.o.config.tls ? 'https' : 'http', this.o.config.port));
  }

  /** Called once the listener is up: the default services URL names the port it got. */
  listening(scheme: string, port: number): void {
    if (!this.o.config.servicesUrl) this.configured = ServiceUrls.localDefault(scheme, port);
  }

  /** An upgrade on the coordinator's listener: a service's WebSocket, or an agent opening its tunnel. */
  async upgrade(req: IncomingMessage, socket: Duplex, head: Buffer): Promise<void> {
    const jobId = this.frontDoor.jobOf(req);
    if (jobId) return this.frontDoor.handleUpgrade(req, socket, head, jobId);
    const path = (req.url ?? '').split('?')[0];
    if (path !== agentTunnelPath) return refuseUpgrade(socket, 404, 'Not Found');
    socket.on('error', () => {});
    let nodeId: string;
    try {
      nodeId = await this.o.agents.verify(req.headers.authorization);
    } catch {
      return refuseUpgrade(socket, 401, 'Unauthorized');
    }
    this.wss.handleUpgrade(req, socket, head, (ws) => this.tunnels.attach(nodeId, ws));
  }

  async start(): Promise<() => Promise<void>> {
    return this.tokens.listenForRevocations();
  }

  stop(): void {
    this.frontDoor.close();
    this.tunnels.closeAll();
    this.wss.close();
  }
}

function refuseUpgrade(socket: Duplex, status: number, text: string): void {
  socket.end(`HTTP/1.1 ${status} ${text}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n`);
}
