import { connect, constants, type ClientHttp2Session } from 'node:http2';
import type { WebSocket } from 'ws';
import { tunnelStream } from '../../shared/tunnel-stream.ts';
import type { Logger } from '../log.ts';

// The agents' tunnels held by this coordinator: each agent keeps one WebSocket to it, and over
// that stream the coordinator runs an HTTP/2 session as the client (the agent serves). HTTP/2
// gives every service request its own stream with flow control and cancellation, from Node itself.

/** How often the coordinator pings an agent's WebSocket; a tunnel without a pong by the next ping is dropped. */
const pingEveryMs = 20_000;
/** HTTP/2 windows: large enough for a fast stream, small enough that a stalled reader holds little. */
const streamWindowBytes = 1024 * 1024;
const sessionWindowBytes = 16 * 1024 * 1024;

interface Tunnel {
  nodeId: string;
  ws: WebSocket;
  session: ClientHttp2Session;
  alive: boolean;
  timer: NodeJS.Timeout;
}

export class Tunnels {
  private byNode = new Map<string, Tunnel>();
  private listeners = new Set<(nodeId: string, connected: boolean) => void>();

  constructor(
    private log: Logger,
    /** Checked at every ping: false (retired, unknown) ends the tunnel. */
    private stillServing: (nodeId: string) => Promise<boolean>,
  ) {}

  /**
   * Takes an agent's WebSocket, just upgraded. The stream is attached at once: frames that
   * arrive with the upgrade would be lost otherwise (PITFALLS.md).
   */
  attach(nodeId: string, ws: WebSocket): void {
    const duplex = tunnelStream(ws);
    const session = connect('http://gantry-agent', {
      createConnection: () => duplex,
      settings: { initialWindowSize: streamWindowBytes, enablePush: false },
    });
    session.on('error', (err) => this.log.warn('tunnel session failed', { nodeId, error: err.message }));
    session.on('connect', () => session.setLocalWindowSize(sessionWindowBytes));
    const previous = this.byNode.get(nodeId);
    const tunnel: Tunnel = {
      nodeId,
      ws,
      session,
      alive: true,
      timer: setInterval(() => void this.ping(tunnel), pingEveryMs).unref(),
    };
    ws.on('pong', () => (tunnel.alive = true));
    const gone = () => {
      clearInterval(tunnel.timer);
      if (!session.destroyed) session.destroy();
      if (this.byNode.get(nodeId) === tunnel) {
        this.byNode.delete(nodeId);
        this.log.info('agent tunnel closed', { nodeId });
        for (const fn of this.listeners) fn(nodeId, false);
      }
    };
    ws.on('close', gone);
    session.on('close', () => ws.terminate());
    this.byNode.set(nodeId, tunnel);
    // The newest connection of a node wins: an older one is a reconnect's leftover.
    if (previous) previous.ws.terminate();
    this.log.info('agent tunnel open', { nodeId });
    for (const fn of this.listeners) fn(nodeId, true);
  }

  /** The node's HTTP/2 session, when its agent's tunnel ends here. */
  session(nodeId: string): ClientHttp2Session | null {
    const t = this.byNode.get(nodeId);
    return t && !t.session.destroyed && !t.session.closed ? t.session : null;
  }

  /** Ends a node's tunnel (retired, or its token no longer verifies). */
  drop(nodeId: string): void {
    this.byNode.get(nodeId)?.ws.terminate();
  }

  onChange(fn: (nodeId: string, connected: boolean) => void): () => void {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  nodes(): string[] {
    return [...this.byNode.keys()];
  }

  closeAll(): void {
    for (const t of this.byNode.values()) {
      t.session.close();
      t.ws.close(1001, 'coordinator stopping');
    }
  }

  private async ping(t: Tunnel): Promise<void> {
    if (!t.alive) {
      this.log.warn('agent tunnel did not answer a ping: dropped', { nodeId: t.nodeId });
      t.ws.terminate();
      return;
    }
    t.alive = false;
    t.ws.ping();
    if (!(await this.stillServing(t.nodeId).catch(() => true))) {
      this.log.info('agent tunnel ended: the node no longer serves', { nodeId: t.nodeId });
      t.ws.close(4001, 'node no longer serves');
    }
  }
}

export const cancelCode = constants.NGHTTP2_CANCEL;
