// The host part of the report: node:os figures, free disk of the work dir, and the Docker
// version asked of an engine over HTTP (a stand-in engine on a unix socket or TCP port).
import { statfs } from 'node:fs/promises';
import { mkdtemp, rm } from 'node:fs/promises';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import {
  detectContainerRuntime,
  detectHost,
  diskFreeMb,
  dockerEndpoint,
  sampleHostMetrics,
} from '../../../provider-agent/hardware/host.ts';
import { HostInfo, HostMetrics } from '../../../shared/hardware.ts';

let dir: string;
const servers: http.Server[] = [];

beforeEach(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'host-test-'));
});
afterEach(async () => {
  for (const s of servers.splice(0)) {
    s.closeAllConnections();
    await new Promise((r) => s.close(r));
  }
  await rm(dir, { recursive: true, force: true });
});

/** A stand-in for the engine's GET /version (only the field the agent reads, Version). */
async function engine(handler: http.RequestListener, listen: { socket: string } | 'tcp'): Promise<string> {
  const server = http.createServer(handler);
  servers.push(server);
  if (listen === 'tcp') {
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    return `tcp://127.0.0.1:${(server.address() as AddressInfo).port}`;
  }
  await new Promise<void>((r) => server.listen(listen.socket, r));
  return `unix://${listen.socket}`;
}

const answersVersion = (version: string): http.RequestListener => (req, res) => {
  if (req.url !== '/version') return void res.writeHead(404).end();
  res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ Version: version, ApiVersion: '1.41' }));
};

describe('detectContainerRuntime', () => {
  it('reads the version from an engine on a unix socket (DOCKER_HOST=unix://…)', async () => {
    const host = await engine(answersVersion('20.10.24+dfsg1'), { socket: path.join(dir, 'docker.sock') });
    expect(await detectContainerRuntime(host)).toEqual({ runtime: { kind: 'docker', version: '20.10.24+dfsg1' }, warning: null });
  });

  it('reads it from an engine on TCP (DOCKER_HOST=tcp://…)', async () => {
    const host = await engine(answersVersion('24.0.7'), 'tcp');
    expect((await detectContainerRuntime(host)).runtime).toEqual({ kind: 'docker', version: '24.0.7' });
  });

  it('no engine at the socket: none, and the warning says where it looked', async () => {
    const got = await detectContainerRuntime(`unix://${path.join(dir, 'missing.sock')}`);
    expect(got.runtime).toEqual({ kind: 'none' });
    expect(got.warning).toContain('missing.sock');
    expect(got.warning).toContain('ENOENT');
  });

  it('an engine that does not answer: none within the timeout', async () => {
    const host = await engine(() => {}, { socket: path.join(dir, 'slow.sock') });
    const started = Date.now();
    const got = await detectContainerRuntime(host, 300);
    expect(Date.now() - started).toBeLessThan(1500);
    expect(got).toEqual({ runtime: { kind: 'none' }, warning: `no container runtime: the Docker engine at ${host} did not answer within 300 ms` });
  });

  it('an answer without a version, or not 200: none', async () => {
    const noVersion = await engine((_req, res) => void res.end('{}'), { socket: path.join(dir, 'a.sock') });
    expect((await detectContainerRuntime(noVersion)).runtime).toEqual({ kind: 'none' });
    const refusing = await engine((_req, res) => void res.writeHead(403).end('{"message":"denied"}'), { socket: path.join(dir, 'b.sock') });
    expect((await detectContainerRuntime(refusing)).warning).toContain('answered 403');
  });

  it('DOCKER_HOST: unset is the default socket; ssh:// is not supported', () => {
    expect(dockerEndpoint(undefined)).toEqual({ socketPath: '/var/run/docker.sock', label: 'unix:///var/run/docker.sock' });
    expect(dockerEndpoint('tcp://10.0.0.2:2376')).toEqual({ host: '10.0.0.2', port: 2376, label: 'tcp://10.0.0.2:2376' });
    expect(dockerEndpoint('ssh://me@box')).toEqual({ unsupported: 'ssh://me@box' });
  });
});

describe('detectHost', () => {
  it('gives a HostInfo the shared schema accepts, with the engine DOCKER_HOST names', async () => {
    const host = await engine(answersVersion('24.0.7'), { socket: path.join(dir, 'docker.sock') });
    const got = await detectHost({ workDir: dir, env: { DOCKER_HOST: host } });
    expect(HostInfo.parse(got.host)).toEqual(got.host);
    expect(got.host.containerRuntime).toEqual({ kind: 'docker', version: '24.0.7' });
    expect(got.warnings).toEqual([]);
    expect(got.host.cpuCores).toBeGreaterThan(0);
    expect(got.host.memoryMb).toBeGreaterThan(0);
  });

  it('free disk is that of the nearest existing dir when the work dir is not made yet', async () => {
    const fs = await statfs(dir);
    const expected = Math.floor((Number(fs.bavail) * Number(fs.bsize)) / 2 ** 20);
    const got = await diskFreeMb(path.join(dir, 'not', 'yet'));
    // Other processes write to the same disk meanwhile: within 64 MiB.
    expect(Math.abs(got - expected)).toBeLessThan(64);
  });
});

describe('sampleHostMetrics', () => {
  it('load and memory used, valid for a heartbeat', () => {
    const m = sampleHostMetrics();
    expect(HostMetrics.parse(m)).toEqual(m);
    expect(m.memoryUsedMb).toBeGreaterThan(0);
  });
});
