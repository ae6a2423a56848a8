// The node's commands of gantry-agent (join, run, install-service), in the dispatcher's shape:
// (args, output) → exit code. Progress goes straight to stdout, since `run` lasts; a failure is
// thrown and main prints it as one line.
import { allowedRegistriesOf, parseJoinArgs, parseRunArgs, parseServiceArgs } from './config.ts';
import Docker from 'dockerode';
import { usage, UsageError } from './cli-args.ts';
import { dockerOptionsFromEnv } from './runtime/docker-options.ts';
import { checkNetworkIsolation, installNetworkRules, jobNetworkName } from './runtime/network.ts';
import { detectHardware } from './hardware/index.ts';
import { joinCoordinator } from './join.ts';
import { runAgent } from './run.ts';
import { dockerRuntimePolicy } from './runtime/select.ts';
import { installService } from './service.ts';

interface Output {
  out: string[];
  err: string[];
}

const wantsHelp = (args: string[]) => args.includes('--help') || args.includes('-h');
const say = (line: string) => void process.stdout.write(line);

export async function joinCommand(args: string[], output: Output): Promise<number> {
  if (wantsHelp(args)) return void output.out.push(usage), 0;
  const settings = parseJoinArgs(args);
  const docker = !settings.unsafeProcessRuntime && !settings.testExecutor;
  const policy = async () => dockerRuntimePolicy({ ...settings, allowedRegistries: allowedRegistriesOf(settings) });
  const detect = async () => detectHardware({ workDir: settings.stateDir, ...(docker ? { policy: await policy() } : {}) });
  const result = await joinCoordinator(settings, { detectHardware: detect, say });
  if (settings.run) return runAgent(settings, { initialHardware: result.hardware });
  if (result.joined) say('Run it with `gantry-agent run`, or install it as a service with `gantry-agent install-service`.\n');
  return 0;
}

export async function runCommand(args: string[], output: Output): Promise<number> {
  if (wantsHelp(args)) return void output.out.push(usage), 0;
  return runAgent(parseRunArgs(args));
}

export async function networkRulesCommand(args: string[], output: Output): Promise<number> {
  if (wantsHelp(args)) return void output.out.push(usage), 0;
  if (args.length) throw new UsageError(`network-rules takes no options, not ${args[0]}`);
  if (process.getuid?.() !== 0) throw new Error('network-rules changes the firewall: run it as root (sudo gantry-agent network-rules)');
  const docker = new Docker(dockerOptionsFromEnv(30_000));
  await installNetworkRules(docker);
  const check = await checkNetworkIsolation(docker, { root: true });
  if (!check.isolated) throw new Error(`the rules were written but are not in force: ${check.why}`);
  output.out.push(`Installed the rules that keep jobs' bridge network (${jobNetworkName}) from this host, its networks and other jobs.\n`);
  return 0;
}

export async function installServiceCommand(args: string[], output: Output): Promise<number> {
  if (wantsHelp(args)) return void output.out.push(usage), 0;
  const { unitPath, next } = await installService(parseServiceArgs(args));
  output.out.push(`Wrote ${unitPath}. Start it now and at every boot with:\n  ${next}\n`);
  return 0;
}
