// gantry-agent's entry (bin/gantry-agent.js runs it through tsx): picks the command and
// turns any failure into one line on stderr and a non-zero exit, never a stack trace.
// A new command is one entry in `commands` and its option parser in cli-args.ts.
import type { HardwareReport } from '../shared/hardware.ts';
import { type CommandName, parseHardwareArgs, parseInvocation, usage, UsageError } from './cli-args.ts';
import { detectHardware } from './hardware/index.ts';
import { installServiceCommand, joinCommand, networkRulesCommand, runCommand } from './commands.ts';
import { allowedRegistriesOf, parseRunArgs } from './config.ts';
import { dockerRuntimePolicy } from './runtime/select.ts';
import { AgentState } from './state.ts';

interface Output {
  out: string[];
  err: string[];
}

type Command = (args: string[], output: Output) => Promise<number>;

function oneLine(err: unknown): string {
  const text = err instanceof Error ? err.message : String(err);
  return text.replace(/\s+/g, ' ').trim() || 'failed';
}

function table(rows: string[][]): string[] {
  const widths = rows[0]!.map((_, col) => Math.max(...rows.map((r) => (r[col] ?? '').length)));
  return rows.map((r) => r.map((cell, col) => cell.padEnd(widths[col]!)).join('  ').trimEnd());
}

function gib(mb: number): string {
  return `${(mb / 1024).toFixed(1)} GiB`;
}

function formatHardware(report: HardwareReport, workDir: string): string {
  const { host } = report;
  const rt = host.containerRuntime;
  const runtime = rt.kind === 'docker' ? `Docker ${rt.version}` : 'no container runtime';
  const extra = rt.kind === 'docker' && rt.networks ? [`networks  ${rt.networks.join(', ')}${rt.networks.includes('bridge') ? '' : ' only (see the warning)'}`] : [];
  if (rt.kind === 'docker' && rt.registries) extra.push(`images    from ${rt.registries.join(', ')}`);
  const lines = [
    `host      ${host.hostname}: ${host.os} ${host.arch}`,
    `cpu       ${host.cpuCores} cores, ${host.cpuModel}`,
    `memory    ${gib(host.memoryMb)}`,
    `disk      ${gib(host.diskFreeMb)} free in ${workDir}`,
    `runtime   ${runtime}`,
    ...extra,
    `gpus      ${report.gpus.length === 0 ? 'none' : report.gpus.length}`,
  ];
  if (report.gpus.length > 0) {
    const rows = [['INDEX', 'ID', 'MODEL', 'MEMORY', 'DRIVER', 'CUDA', 'PCI BUS ID', 'MIG']];
    for (const g of report.gpus) {
      rows.push([
        String(g.index),
        g.id,
        g.model,
        `${g.memoryMb} MiB`,
        g.driverVersion,
        g.cudaVersion ?? '-',
        g.pciBusId ?? '-',
        g.mig ? `device ${g.mig.index} (gi ${g.mig.gpuInstanceId}, ci ${g.mig.computeInstanceId})` : '-',
      ]);
    }
    lines.push(...table(rows).map((l) => `  ${l}`));
  }
  for (const w of report.warnings) lines.push(`warning: ${w}`);
  return `${lines.join('\n')}\n`;
}

const hardware: Command = async (args, output) => {
  const opts = parseHardwareArgs(args);
  if (opts.help) {
    output.out.push(usage);
    return 0;
  }
  // What the Docker runtime would take with this environment's GANTRY_AGENT_* settings.
  const settings = parseRunArgs([]);
  const node = await new AgentState(settings.stateDir).readNode().catch(() => null);
  const policy = await dockerRuntimePolicy({ ...settings, allowedRegistries: allowedRegistriesOf(settings, node), workDir: opts.workDir });
  const report = await detectHardware({ workDir: opts.workDir, timeoutMs: opts.timeoutMs, policy });
  output.out.push(opts.json ? `${JSON.stringify(report, null, 2)}\n` : formatHardware(report, opts.workDir));
  return 0;
};

const commands: Record<CommandName, Command> = {
  hardware,
  join: joinCommand,
  run: runCommand,
  'install-service': installServiceCommand,
  'network-rules': networkRulesCommand,
};

async function main(argv: string[], output: Output): Promise<number> {
  try {
    const invocation = parseInvocation(argv);
    if (invocation.command === 'help') {
      output.out.push(usage);
      return 0;
    }
    return await commands[invocation.command](invocation.args, output);
  } catch (err) {
    if (err instanceof UsageError) {
      output.err.push(`gantry-agent: ${oneLine(err)} (gantry-agent --help for usage)\n`);
      return 2;
    }
    output.err.push(`gantry-agent: ${oneLine(err)}\n`);
    return 1;
  }
}

function write(stream: NodeJS.WriteStream, chunks: string[]): Promise<void> {
  return new Promise((resolve) => (chunks.length === 0 ? resolve() : stream.write(chunks.join(''), () => resolve())));
}

const output: Output = { out: [], err: [] };
const code = await main(process.argv.slice(2), output);
await write(process.stdout, output.out);
await write(process.stderr, output.err);
// Exit even if a hung nvidia-smi we could not kill still holds the event loop open.
process.exit(code);
