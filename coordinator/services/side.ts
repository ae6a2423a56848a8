import type { IncomingMessage } from 'node:http';
import type { Duplex } from 'node:stream';
import { WebSocketServer } from 'ws';
import { agentTunnelPath } from '../../shared/services.ts';
import type { Clock } from '../clock.ts';
import type { Config } from '../config.ts';
import type { Database } from '../db/open.ts';
import { ApiError } from '../errors.ts';
import type { Logger } from '../log.ts';
import type { AgentVerifier } from '../nodes/agent-auth.ts';
import { ServiceDirectory } from './directory.ts';
import { Replicas, type ReplicaKeys } from './replicas.ts';
import { RequestCounts } from './request-counts.ts';
import { ServiceTokenVerifier } from './tokens.ts';
import { Tunnels } from './tunnels.ts';
import { ServiceUrls } from './urls.ts';

/**
 * Everything of service jobs on one coordinator but the front door (http/service-front-door.ts):
 * their URLs, routing facts, tokens, and the agents' tunnels.
 */
export class ServiceSide {
  readonly directory: ServiceDirectory;
  readonly tokens: ServiceTokenVerifier;
  readonly tunnels: Tunnels;
  readonly replicas: Replicas;
  readonly counts: RequestCounts;
  private configured: ServiceUrls | null;
  private wss = new WebSocketServer({ noServer: true, maxPayload: 4 * 1024 * 1024, perMessageDeflate: false });

  constructor(
    private o: { config: Config; database: Database; clock: Clock; log: Logger; agents: AgentVerifier; signingKeys: ReplicaKeys },
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
    this.counts = new RequestCounts(o.database, o.log);
    this.replicas = new Replicas(o.database, o.clock, o.signingKeys, o.config.internalUrl, o.config.name);
    // Which replica holds a node's tunnel, for the others to forward to (with GANTRY_INTERNAL_URL).
    this.tunnels.onChange((nodeId, connected) => {
      void (connected ? this.replicas.held(nodeId) : this.replicas.released(nodeId)).catch((err: Error) =>
        o.log.warn('could not record where a tunnel ends', { nodeId, error: err.message }),
      );
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

  /** An upgrade on the API's host: an agent opening its tunnel (nothing else is upgraded there). */
  async upgrade(req: IncomingMessage, socket: Duplex, head: Buffer): Promise<void> {
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
    const unlisten = await this.tokens.listenForRevocations();
    this.counts.start();
    return async () => {
      await this.counts.stop();
      await unlisten();
    };
  }

  stop(): void {
    this.tunnels.closeAll();
    this.wss.close();
  }
}

function refuseUpgrade(socket: Duplex, status: number, text: string): void {
  socket.end(`HTTP/1.1 ${status} ${text}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n`);
}
