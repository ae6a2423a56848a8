import { ApiClient } from '../shared/client.ts';
import type { HardwareReport } from '../shared/hardware.ts';
import { AgentTokenSigner } from './agent-token.ts';
import { allowedRegistriesOf, checkCoordinatorUrl, type RunSettings } from './config.ts';
import { detectHardware, sampleMetrics } from './hardware/index.ts';
import { CoordinatorClock } from './coordinator-clock.ts';
import { HeartbeatLoop } from './heartbeat.ts';
import { agentVersion } from './join.ts';
import { ReportStore } from './leases/report-store.ts';
import { LeaseRunner } from './leases/runner.ts';
import { httpLogTransport } from './logs/transport.ts';
import { LogShipper } from './logs/shipper.ts';
import { dockerRuntimePolicy, RuntimeUnavailableError, selectExecutor } from './runtime/select.ts';
import { AgentState } from './state.ts';
import { ServiceKeeper } from './tunnel/keeper.ts';
import { ServiceTunnel } from './tunnel/tunnel.ts';

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

  const allowedRegistries = allowedRegistriesOf(settings, node);
  // One estimate of the coordinator's clock, from the Date header of every answer: lease expiries
  // and the agent's own token times are the coordinator's.
  const clock = new CoordinatorClock();
  const signer = new AgentTokenSigner(key.privateKey, node.nodeId, node.coordinatorName, { now: () => clock.coordinatorNow() });
  const client = new ApiClient({
    baseUrl: node.coordinatorUrl,
    token: () => signer.token(),
    onResponse: (res, sentAt, receivedAt) => clock.observe(res.headers.get('date'), sentAt, receivedAt),
  });
  const loop = new HeartbeatLoop({
    client,
    intervalMs: settings.heartbeatSeconds * 1000,
    hardwareEveryMs: settings.hardwareSeconds * 1000,
    // The Docker runtime's registries and networks go with the hardware: the coordinator matches jobs to them.
    detectHardware: async () =>
      detectHardware({
        workDir: settings.stateDir,
        ...(selected?.executor.name === 'docker' ? { policy: await dockerRuntimePolicy({ ...settings, allowedRegistries }) } : {}),
      }),
    sampleMetrics: (onWarning) => sampleMetrics({ onWarning }),
    ...(opts.initialHardware ? { initialHardware: opts.initialHardware } : {}),
    agentVersion,
    log,
  });

  const runnerLog = {
    info: (m: string, f?: Record<string, unknown>) => log(f ? `${m} ${JSON.stringify(f)}` : m),
    warn: (m: string, f?: Record<string, unknown>) => log(`warning: ${f ? `${m} ${JSON.stringify(f)}` : m}`),
    error: (m: string, f?: Record<string, unknown>) => log(`error: ${f ? `${m} ${JSON.stringify(f)}` : m}`),
  };
  // Docker by default; the process runtime only with --unsafe-process-runtime (runtime/select.ts).
  // With neither, the node stays online (heartbeats, metrics) but takes no work, and says so.
  const selected = await selectExecutor({
    nodeId: node.nodeId,
    stateDir: settings.stateDir,
    unsafeProcessRuntime: settings.unsafeProcessRuntime,
    testExecutor: settings.testExecutor,
    allowedRegistries,
    log: runnerLog,
    say: log,
  }).catch((err) => {
    if (!(err instanceof RuntimeUnavailableError)) throw err;
    log(`warning: ${err.message}; until then this node takes no jobs`);
    return null;
  });
  // Service jobs are reached through one outbound tunnel to the coordinator (nothing is published on this host).
  const tunnel = new ServiceTunnel({ coordinatorUrl: node.coordinatorUrl, token: () => signer.token(), log });
  const runner = selected
    ? new LeaseRunner({
        services: new ServiceKeeper(tunnel, client, log),
        client,
        nodeId: node.nodeId,
        issuer: node.coordinatorName,
        executor: selected.executor,
        log: runnerLog,
        reports: new ReportStore(state.reportsDir),
        clock,
        logSink: (grant) =>
          new LogShipper({
            transport: httpLogTransport(client, grant.jobId, grant.epoch),
            capBytes: selected.settings.GANTRY_AGENT_LOG_CAP_BYTES,
            warn: runnerLog.warn,
          }),
      })
    : null;
  loop.supplyHeldJobs(() => runner?.heldJobs() ?? []);
  // Without a runtime the node stays online for its metrics, but the scheduler places nothing on it.
  loop.supplyTakesWork(() => runner !== null);
  loop.onAnswer((answer) => runner?.onHeartbeatAnswer(answer));

  log(`gantry-agent ${agentVersion} running as node ${node.nodeId} (${node.name}) for ${node.coordinatorUrl}, heartbeat every ${settings.heartbeatSeconds} s`);
  const stopped = new Promise<string>((resolve) => {
    process.once('SIGTERM', () => resolve('SIGTERM'));
    process.once('SIGINT', () => resolve('SIGINT'));
  });
  const ended = loop.start();
  if (runner) tunnel.start();
  await runner?.start();
  const signal = await Promise.race([stopped, ended.then(() => 'loop ended')]);
  log(`stopping (${signal})`);
  await runner?.stop();
  await tunnel.stop();
  await loop.stop();
  return 0;
}
