import { ApiClient, ApiRequestError, UnreachableError } from '../shared/client.ts';
import { gantryVersion } from '../shared/version.ts';
import type { HardwareReport } from '../shared/hardware.ts';
import { RegisteredNode, type RegisterNode } from '../shared/nodes.ts';
import { checkCoordinatorUrl, type JoinSettings } from './config.ts';
import { noRuntimeAdvice } from './runtime/select.ts';
import { AgentState, type NodeState } from './state.ts';

export const agentVersion = gantryVersion;

/** A join that cannot go on, said in one line (main prints it and exits 1). */
export class JoinError extends Error {}

export interface JoinResult {
  node: NodeState;
  /** False when the machine was enrolled already and nothing was registered. */
  joined: boolean;
  /** The inventory registered (null when nothing was). */
  hardware: HardwareReport | null;
}

const sameUrl = (a: string, b: string) => new URL(a).href === new URL(b).href;

/**
 * `gantry-agent join`: detects the hardware, makes the node's key pair, registers with the
 * enrollment token and keeps what the coordinator answered in the state dir. On a machine that
 * is enrolled already it registers nothing and says so.
 */
export async function joinCoordinator(
  settings: JoinSettings,
  deps: { detectHardware: () => Promise<HardwareReport>; say: (line: string) => void; fetch?: typeof fetch },
): Promise<JoinResult> {
  checkCoordinatorUrl(settings.coordinatorUrl, settings.insecureHttp);
  const state = new AgentState(settings.stateDir);
  const enrolled = await state.readNode();
  if (enrolled) {
    if (!sameUrl(enrolled.coordinatorUrl, settings.coordinatorUrl)) {
      throw new JoinError(
        `this machine is already enrolled as node ${enrolled.nodeId} with the coordinator at ${enrolled.coordinatorUrl}; ` +
          `to join another one, retire that node and remove ${state.nodeFile}, or use another --state-dir`,
      );
    }
    deps.say(`This machine is already enrolled as node ${enrolled.nodeId} (${enrolled.name}) at ${enrolled.coordinatorUrl}; nothing to do.\n`);
    return { node: enrolled, joined: false, hardware: null };
  }

  const hardware = await deps.detectHardware();
  for (const w of hardware.warnings) deps.say(`warning: ${w}\n`);
  if (hardware.host.containerRuntime.kind !== 'docker' && !settings.unsafeProcessRuntime && !settings.testExecutor) {
    deps.say(`warning: no Docker engine here, so this node cannot run jobs: ${noRuntimeAdvice}\n`);
  }
  const key = await state.loadOrCreateKey();
  const client = new ApiClient({ baseUrl: settings.coordinatorUrl, timeoutMs: 30_000, ...(deps.fetch ? { fetch: deps.fetch } : {}) });
  const body: RegisterNode = {
    token: settings.token,
    publicKey: { kty: 'OKP', crv: 'Ed25519', x: String(key.publicJwk.x) },
    hardware,
    agentVersion,
    ...(settings.name ? { name: settings.name } : {}),
    ...(Object.keys(settings.labels).length ? { labels: settings.labels } : {}),
    ...(settings.region ? { region: settings.region } : {}),
    ...(settings.priceGpuHour !== undefined ? { priceGpuHour: settings.priceGpuHour } : {}),
    ...(settings.priceCpuHour !== undefined ? { priceCpuHour: settings.priceCpuHour } : {}),
  };
  let answer: RegisteredNode;
  try {
    answer = await client.post('/v1/agent/register', body, RegisteredNode);
  } catch (err) {
    if (err instanceof ApiRequestError) {
      const fields = err.problem?.errors?.map((e) => `${e.path || '(body)'}: ${e.message}`).slice(0, 3).join('; ');
      throw new JoinError(`join refused: ${err.message}${fields && !err.message.includes(fields) ? ` (${fields})` : ''}`);
    }
    if (err instanceof UnreachableError) throw new JoinError(err.message);
    throw err;
  }
  const node: NodeState = {
    nodeId: answer.nodeId,
    name: answer.name,
    coordinatorUrl: settings.coordinatorUrl,
    coordinatorName: answer.coordinatorName,
    insecureHttp: settings.insecureHttp,
    ...(settings.allowedRegistries ? { allowedRegistries: settings.allowedRegistries } : {}),
    enrolledAt: new Date().toISOString(),
  };
  await state.writeNode(node);
  const gpus = hardware.gpus.length;
  deps.say(
    `Joined ${settings.coordinatorUrl} as node ${node.nodeId} (${node.name}) with ${gpus} GPU${gpus === 1 ? '' : 's'}, ` +
      `${hardware.host.cpuCores} CPU cores and ${Math.round(hardware.host.memoryMb / 1024)} GiB of memory.\n`,
  );
  return { node, joined: true, hardware };
}
