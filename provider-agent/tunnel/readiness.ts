import { request } from 'node:http';
import { connect } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import type { ServiceAddress } from './tunnel.ts';

/** How often a starting service is probed, and how long one probe may take. */
const probeEveryMs = 1000;
const probeTimeoutMs = 2000;

/**
 * Probes a service job inside the node until it answers: GET readinessPath answering 2xx or 3xx
 * (as a Kubernetes HTTP probe), or, without a path, a TCP connect to its port. Resolves true once
 * it passes, false when the signal stops it first.
 */
export async function waitUntilReady(address: ServiceAddress, readinessPath: string | undefined, signal: AbortSignal): Promise<boolean> {
  while (!signal.aborted) {
    if (await probeOnce(address, readinessPath)) return true;
    await sleep(probeEveryMs, undefined, { signal }).catch(() => {});
  }
  return false;
}

export function probeOnce(address: ServiceAddress, readinessPath: string | undefined): Promise<boolean> {
  return new Promise((resolve) => {
    if (!readinessPath) {
      const socket = connect({ host: address.host, port: address.port, timeout: probeTimeoutMs });
      socket.once('connect', () => {
        socket.destroy();
        resolve(true);
      });
      socket.once('timeout', () => {
        socket.destroy();
        resolve(false);
      });
      socket.once('error', () => resolve(false));
      return;
    }
    const req = request({ host: address.host, port: address.port, path: readinessPath, method: 'GET', timeout: probeTimeoutMs, headers: { 'user-agent': 'gantry-agent-probe' } });
    req.once('response', (res) => {
      res.resume();
      const status = res.statusCode ?? 0;
      resolve(status >= 200 && status < 400);
    });
    req.once('timeout', () => req.destroy(new Error('probe timed out')));
    req.once('error', () => resolve(false));
    req.end();
  });
}
