import { ApiClient } from '../shared/client.ts';
import type { HardwareReport } from '../shared/hardware.ts';
import { AgentTokenSigner } from './agent-token.ts';
import { checkCoordinatorUrl, type RunSettings } from './config.ts';
import { detectHardware, sampleMetrics } from './hardware/index.ts';
import { HeartbeatLoop } from './heartbeat.ts';
import { agentVersion } from './join.ts';
import { AgentState } from './state.ts';

export class NotEnrolledError extends Error {}

/** One line per event on stdout, with the time: what journald or a terminal shows. */
export const agentLog = (line: string) => process.stdout.write(`${new Date().toISOString()} ${line}\n`);

/**
 * `gantry-agent run`: the enrolled node's life. Heartbeats until SIGTERM or SIGINT; resolves
 * with the exit code.
 */
export async function runAgent(settings: RunSettings, opts: { initialHardware?: HardwareReport | null; log?: (line: string) => void } = {}): Promise<number> {
  const log = opts.log ?? agentLog;
  const state = new AgentState(settings.stateDir);
  const node = await state.readNode();
  if (!node) throw new NotEnrolledError(`this machine is not enrolled (no node in ${settings.stateDir}): run gantry-agent join first`);
  checkCoordinatorUrl(node.coordinatorUrl, settings.insecureHttp || node.insecureHttp);
  const key = await state.loadKey();
  if (!key) throw new NotEnrolledError(`the node's key is missing from ${settings.stateDir}: join again with a fresh state dir`);

  const signer = new AgentTokenSigner(key.privateKey, node.nodeId, node.coordinatorName);
  const client = new ApiClient({ baseUrl: node.coordinatorUrl, token: () => signer.token() });
  const loop = new HeartbeatLoop({
    client,
    intervalMs: settings.heartbeatSeconds * 1000,
    hardwareEveryMs: settings.hardwareSeconds * 1000,
    detectHardware: () => detectHardware({ workDir: settings.stateDir }),
    sampleMetrics: (onWarning) => sampleMetrics({ onWarning }),
    ...(opts.initialHardware ? { initialHardware: opts.initialHardware } : {}),
    agentVersion,
    log,
  });

  log(`gantry-agent ${agentVersion} running as node ${node.nodeId} (${node.name}) for ${node.coordinatorUrl}, heartbeat every ${settings.heartbeatSeconds} s`);
  const stopped = new Promise<string>((resolve) => {
    process.once('SIGTERM', () => resolve('SIGTERM'));
    process.once('SIGINT', () => resolve('SIGINT'));
  });
  const ended = loop.start();
  const signal = await Promise.race([stopped, ended.then(() => 'loop ended')]);
  log(`stopping (${signal})`);
  await loop.stop();
  return 0;
}
