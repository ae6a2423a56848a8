// Network namespaces a test makes for itself, and a Docker engine with its own iptables inside one:
// what a test of jobs' network isolation needs without touching the shared engine (which runs
// with --iptables=false) or the host's firewall. Needs root, unshare, nsenter, ip and dockerd.
//
// `ip netns exec` cannot start a dockerd here (it remounts /sys); `nsenter --net` can (PITFALLS.md).
// A namespace is held by a `sleep` started with `unshare --net` (which execs it: its pid is the
// namespace's). Loopback services of the host (the coordinator, the test registry) are carried
// into a namespace through a unix socket, which crosses network namespaces.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import Docker from 'dockerode';
import { until } from './until.ts';

export interface Namespace {
  pid: number;
  /** `nsenter --net=…`: put before a command to run it in the namespace. */
  enter: string[];
  /** Runs a command in the namespace to its end; throws with its stderr when it fails. */
  sh(cmd: string, ...args: string[]): string;
  /** Starts a long-lived command in the namespace. */
  spawn(cmd: string, args: string[], env?: Record<string, string>): ChildProcess;
  close(): Promise<void>;
}

const children = new Set<ChildProcess>();

async function stop(child: ChildProcess, signal: NodeJS.Signals = 'SIGTERM', timeoutMs = 20_000): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise<void>((r) => child.once('exit', () => r()));
  child.kill(signal);
  const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
  await exited;
  clearTimeout(timer);
  children.delete(child);
}

/** Whether this machine lets a test make namespaces and run a dockerd in one. */
export function netnsSupport(): { ok: true } | { ok: false; why: string } {
  if (process.getuid?.() !== 0) return { ok: false, why: 'not root' };
  for (const bin of ['unshare', 'nsenter', 'ip', 'iptables', 'dockerd']) {
    if (spawnSync('sh', ['-c', `command -v ${bin}`]).status !== 0) return { ok: false, why: `no ${bin}` };
  }
  return { ok: true };
}

export async function makeNamespace(): Promise<Namespace> {
  const holder = spawn('unshare', ['--net', 'sleep', 'infinity'], { stdio: 'ignore' });
  children.add(holder);
  const pid = holder.pid!;
  const nsPath = `/proc/${pid}/ns/net`;
  // The exec into sleep makes the namespace the holder's own: wait for it to differ from ours.
  const own = spawnSync('readlink', ['/proc/self/ns/net']).stdout.toString().trim();
  await until('the namespace', () => {
    const r = spawnSync('readlink', [nsPath]);
    return r.status === 0 && r.stdout.toString().trim() !== own;
  }, 10_000);
  const enter = ['nsenter', `--net=${nsPath}`];
  const sh = (cmd: string, ...args: string[]) => {
    const r = spawnSync(enter[0]!, [...enter.slice(1), cmd, ...args], { encoding: 'utf8' });
    if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} failed in the namespace: ${r.stderr || r.error?.message}`);
    return r.stdout;
  };
  sh('ip', 'link', 'set', 'lo', 'up');
  return {
    pid,
    enter,
    sh,
    spawn(cmd, args, env = {}) {
      const child = spawn(enter[0]!, [...enter.slice(1), cmd, ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env } });
      children.add(child);
      return child;
    },
    close: () => stop(holder, 'SIGKILL'),
  };
}

/** A veth pair between two namespaces, each end with its address (a /24). */
export function linkNamespaces(a: Namespace, aAddr: string, b: Namespace, bAddr: string, name = 'gt'): void {
  a.sh('ip', 'link', 'add', `${name}a`, 'type', 'veth', 'peer', 'name', `${name}b`, 'netns', String(b.pid));
  a.sh('ip', 'addr', 'add', `${aAddr}/24`, 'dev', `${name}a`);
  a.sh('ip', 'link', 'set', `${name}a`, 'up');
  b.sh('ip', 'addr', 'add', `${bAddr}/24`, 'dev', `${name}b`);
  b.sh('ip', 'link', 'set', `${name}b`, 'up');
}

const nodeScript = (body: string) => [process.execPath, '-e', body];

/** A TCP server in the namespace that answers every connection with `reached <its own address>`. */
export async function answerIn(ns: Namespace, port: number): Promise<ChildProcess> {
  const [cmd, ...args] = nodeScript(`require('net').createServer((c) => c.end('reached ' + c.localAddress + '\\n')).listen(${port}, '0.0.0.0', () => console.log('listening'))`);
  return readyLine(ns.spawn(cmd!, args));
}

async function readyLine(child: ChildProcess): Promise<ChildProcess> {
  await new Promise<void>((resolve, reject) => {
    let out = '';
    child.stdout!.on('data', (b: Buffer) => {
      out += b.toString();
      if (out.includes('listening')) resolve();
    });
    child.once('exit', (code) => reject(new Error(`exited (${code}) before listening`)));
  });
  return child;
}

/**
 * The host's 127.0.0.1:port, reachable at 127.0.0.1:port inside the namespace: a listener there
 * that hands each connection through a unix socket to this process, which connects on loopback.
 */
export async function carryLoopbackPort(ns: Namespace, port: number, dir: string): Promise<() => Promise<void>> {
  const sock = path.join(dir, `port-${port}.sock`);
  const bridge = net.createServer((c) => {
    const up = net.connect(port, '127.0.0.1');
    c.pipe(up).pipe(c);
    c.on('error', () => up.destroy());
    up.on('error', () => c.destroy());
  });
  await new Promise<void>((r) => bridge.listen(sock, r));
  const [cmd, ...args] = nodeScript(
    `const net = require('net'); net.createServer((c) => { const u = net.connect(${JSON.stringify(sock)}); c.pipe(u).pipe(c); c.on('error', () => u.destroy()); u.on('error', () => c.destroy()); }).listen(${port}, '127.0.0.1', () => console.log('listening'))`,
  );
  const inside = await readyLine(ns.spawn(cmd!, args));
  return async () => {
    await stop(inside);
    bridge.close();
  };
}

export interface NamespacedEngine {
  docker: Docker;
  /** DOCKER_HOST for processes that use it. */
  host: string;
  close(): Promise<void>;
}

/** A dockerd of the test's own in the namespace, iptables on, every path its own. */
export async function startDockerd(ns: Namespace): Promise<NamespacedEngine> {
  const dir = await mkdtemp(path.join(tmpdir(), 'gantry-dockerd-'));
  const socket = path.join(dir, 'docker.sock');
  const child = ns.spawn('dockerd', [
    `--host=unix://${socket}`,
    `--data-root=${path.join(dir, 'data')}`,
    `--exec-root=${path.join(dir, 'exec')}`,
    `--pidfile=${path.join(dir, 'docker.pid')}`,
    '--storage-driver=overlay2',
    '--exec-opt=native.cgroupdriver=cgroupfs',
    '--iptables=true',
  ]);
  let log = '';
  child.stderr!.on('data', (b: Buffer) => (log = (log + b.toString()).slice(-4000)));
  child.stdout!.on('data', () => {});
  const docker = new Docker({ socketPath: socket, timeout: 30_000 });
  try {
    await until('the namespaced dockerd to answer', () => docker.ping().then(() => true, () => child.exitCode !== null && Promise.reject(new Error(`dockerd exited: ${log}`))), 60_000);
  } catch (err) {
    await stop(child);
    throw err;
  }
  return {
    docker,
    host: `unix://${socket}`,
    async close() {
      for (const c of await docker.listContainers({ all: true }).catch(() => [])) await docker.getContainer(c.Id).remove({ force: true }).catch(() => {});
      await stop(child, 'SIGTERM', 30_000);
      await rm(dir, { recursive: true, force: true }).catch(() => {});
    },
  };
}

/** Every child this module started and did not stop yet (a failed beforeAll). */
export async function stopAll(): Promise<void> {
  for (const c of [...children].reverse()) await stop(c, 'SIGKILL');
}
