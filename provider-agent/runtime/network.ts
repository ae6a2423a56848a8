import { execFile } from 'node:child_process';
import { mkdir, stat, writeFile } from 'node:fs/promises';
import { promisify } from 'node:util';
import type Docker from 'dockerode';

// A job's `bridge` network: the internet, and nothing of the provider's. Jobs join a Docker
// network of the agent's own (bridge gantry0, inter-container traffic off), and firewall rules
// keep what leaves it away from other jobs, the private ranges, link-local addresses (the cloud
// metadata endpoint) and the host itself: forwarded traffic in DOCKER-USER, traffic to the host
// in INPUT (DOCKER-USER never sees it), DNS and replies excepted. IPv6 is off in job containers
// and dropped from the bridge. Installing the rules needs root (`gantry-agent network-rules`,
// which install-service's unit runs before each start); a node without them in force takes only
// `network: none` jobs.

const run = promisify(execFile);

export const jobNetworkName = 'gantry-jobs';
export const jobBridgeName = 'gantry0';
const forwardChain = 'GANTRY-JOBS';
const inputChain = 'GANTRY-JOBS-INPUT';

/** Where jobs may not go: this network, private ranges (RFC 1918, CGNAT), link-local, loopback, multicast, reserved. */
export const blockedRanges = ['0.0.0.0/8', '10.0.0.0/8', '100.64.0.0/10', '127.0.0.0/8', '169.254.0.0/16', '172.16.0.0/12', '192.168.0.0/16', '224.0.0.0/4', '240.0.0.0/4'];

const dns = [
  ['-p', 'udp', '--dport', '53', '-j', 'RETURN'],
  ['-p', 'tcp', '--dport', '53', '-j', 'RETURN'],
];

/** Each chain's rules in order, and the jump into it that must come first in its parent chain. */
const ipv4 = [
  {
    chain: forwardChain,
    parent: 'DOCKER-USER',
    rules: [['-o', jobBridgeName, '-j', 'DROP'], ...dns, ...blockedRanges.map((r) => ['-d', r, '-j', 'DROP'])],
  },
  {
    chain: inputChain,
    parent: 'INPUT',
    rules: [['-m', 'conntrack', '--ctstate', 'RELATED,ESTABLISHED', '-j', 'RETURN'], ...dns, ['-j', 'DROP']],
  },
];
const ipv6Parents = ['INPUT', 'FORWARD'];

export type NetworkIsolation = { isolated: true } | { isolated: false; why: string };

const iptables = async (bin: 'iptables' | 'ip6tables', args: string[]) => (await run(bin, ['-w', '5', ...args], { timeout: 15_000 })).stdout;
const succeeds = (p: Promise<unknown>) => p.then(() => true, () => false);

/** The network jobs with `network: bridge` join, made when missing. */
export async function ensureJobNetwork(docker: Docker): Promise<void> {
  const existing = await docker.getNetwork(jobNetworkName).inspect().catch((err: { statusCode?: number }) => {
    if (err?.statusCode === 404) return null;
    throw err;
  });
  if (existing) return;
  await docker.createNetwork({
    Name: jobNetworkName,
    Driver: 'bridge',
    EnableIPv6: false,
    Options: {
      'com.docker.network.bridge.name': jobBridgeName,
      'com.docker.network.bridge.enable_icc': 'false',
      'com.docker.network.bridge.enable_ip_masquerade': 'true',
    },
    Labels: { 'io.gantry.managed': 'true' },
  });
}

/** Installs (again) the rules: idempotent, each chain flushed and refilled, each jump made first in its parent. */
export async function installNetworkRules(docker: Docker, markerDir = defaultMarkerDir): Promise<void> {
  await ensureJobNetwork(docker);
  for (const { chain, parent, rules } of ipv4) {
    if (!(await succeeds(iptables('iptables', ['-n', '-L', chain])))) await iptables('iptables', ['-N', chain]);
    await iptables('iptables', ['-F', chain]);
    for (const rule of rules) await iptables('iptables', ['-A', chain, ...rule]);
    const jump = ['-i', jobBridgeName, '-j', chain];
    if (!(await succeeds(iptables('iptables', ['-n', '-L', parent])))) await iptables('iptables', ['-N', parent]);
    while (await succeeds(iptables('iptables', ['-C', parent, ...jump]))) await iptables('iptables', ['-D', parent, ...jump]);
    await iptables('iptables', ['-I', parent, '1', ...jump]);
  }
  for (const parent of ipv6Parents) {
    const drop = ['-i', jobBridgeName, '-j', 'DROP'];
    // A host without IPv6 has no ip6tables to fill: nothing of IPv6 to reach there either.
    if (!(await succeeds(iptables('ip6tables', ['-n', '-L', parent])))) continue;
    while (await succeeds(iptables('ip6tables', ['-C', parent, ...drop]))) await iptables('ip6tables', ['-D', parent, ...drop]);
    await iptables('ip6tables', ['-I', parent, '1', ...drop]);
  }
  await mkdir(markerDir, { recursive: true, mode: 0o755 });
  await writeFile(`${markerDir}/network-rules`, `${new Date().toISOString()}\n`, { mode: 0o644 });
}

/** Written by network-rules (as root): what tells an agent that is not root that the rules were installed since boot. */
export const defaultMarkerDir = '/run/gantry-agent';

/**
 * Whether a job's bridge network is isolated here now: the network exists as the rules expect it,
 * and (read where the agent may: as root) every rule is in place with its jump first in its
 * parent chain; an agent that is not root trusts the marker network-rules left since boot.
 */
export async function checkNetworkIsolation(docker: Docker, opts: { root?: boolean; markerDir?: string } = {}): Promise<NetworkIsolation> {
  const advice = 'run `sudo gantry-agent network-rules` (install-service does at every start)';
  let net: Docker.NetworkInspectInfo;
  try {
    net = await docker.getNetwork(jobNetworkName).inspect();
  } catch {
    return { isolated: false, why: `no ${jobNetworkName} network on the engine; ${advice}` };
  }
  if (net.Options?.['com.docker.network.bridge.enable_icc'] !== 'false' || net.Options?.['com.docker.network.bridge.name'] !== jobBridgeName) {
    return { isolated: false, why: `the ${jobNetworkName} network lets jobs reach each other; remove it and ${advice}` };
  }
  const root = opts.root ?? process.getuid?.() === 0;
  if (!root) {
    const marked = await succeeds(stat(`${opts.markerDir ?? defaultMarkerDir}/network-rules`));
    return marked ? { isolated: true } : { isolated: false, why: `the firewall rules are not installed; ${advice}` };
  }
  try {
    for (const { chain, parent, rules } of ipv4) {
      const listed = (await iptables('iptables', ['-S', chain])).trim().split('\n').slice(1);
      if (listed.length !== rules.length) throw new Error(`${chain} has ${listed.length} rules, not ${rules.length}`);
      for (const rule of rules) await iptables('iptables', ['-C', chain, ...rule]);
      const first = (await iptables('iptables', ['-S', parent])).split('\n').find((l) => l.startsWith('-A '));
      if (first !== `-A ${parent} -i ${jobBridgeName} -j ${chain}`) throw new Error(`the jump to ${chain} is not first in ${parent}`);
    }
    for (const parent of ipv6Parents) {
      if (!(await succeeds(iptables('ip6tables', ['-n', '-L', parent])))) continue;
      const first = (await iptables('ip6tables', ['-S', parent])).split('\n').find((l) => l.startsWith('-A '));
      if (first !== `-A ${parent} -i ${jobBridgeName} -j DROP`) throw new Error(`the IPv6 drop is not first in ${parent}`);
    }
  } catch (err) {
    const msg = (err as { stderr?: string; message?: string }).stderr?.trim() || (err as Error).message;
    return { isolated: false, why: `the firewall rules are not in force (${msg.split('\n')[0]}); ${advice}` };
  }
  return { isolated: true };
}

/** The isolation check, answered from a recent result: a lease does not wait for a dozen iptables calls. */
export class NetworkGuard {
  private last: { at: number; value: Promise<NetworkIsolation> } | null = null;
  constructor(
    private readonly docker: Docker,
    private readonly maxAgeMs = 15_000,
  ) {}

  status(): Promise<NetworkIsolation> {
    if (!this.last || Date.now() - this.last.at > this.maxAgeMs) {
      this.last = { at: Date.now(), value: checkNetworkIsolation(this.docker).catch((err: Error) => ({ isolated: false as const, why: err.message })) };
    }
    return this.last.value;
  }
}
