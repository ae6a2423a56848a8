// The agent's command line: `gantry-agent <command> [options]`. Each command parses its own
// options here, with node:util parseArgs, and gets back a typed value or a UsageError.
import { parseArgs } from 'node:util';

export const commandNames = ['hardware', 'join', 'run', 'install-service', 'network-rules'] as const;
export type CommandName = (typeof commandNames)[number];

export const usage = `Usage: gantry-agent <command> [options]

Commands:
  hardware [--json]      what this machine offers: CPU, memory, disk, GPUs, container runtime
  join                   register this machine with a coordinator (with --run: then run it)
  run                    run the agent: heartbeats with live metrics, leases
  install-service        write a systemd unit that runs the agent at every boot, after network-rules as root
  network-rules          (root) install the firewall rules that isolate jobs' bridge network

Options for hardware:
  --json                 print one JSON object instead of a table
  --work-dir <dir>       the agent's work dir, whose free space is reported (default: .)
  --timeout <ms>         limit for each nvidia-smi call (default: 15000)

Options for join:
  --coordinator <url>    the coordinator: https://, or http:// on this machine
  --token <token>        an enrollment token (from gantry tokens create)
  --name <name>          the node's name (default: the hostname)
  --label <key=value>    a label for the node; repeat for more
  --region <region>      the node's region, like eu-west
  --price-gpu-hour <p>   price per GPU-hour, like 1.25
  --price-cpu-hour <p>   price per CPU-core-hour, like 0.02
  --run                  run the agent once joined

Options for join and run:
  --state-dir <dir>      the node's key and id (default: $GANTRY_AGENT_STATE_DIR or ~/.gantry-agent)
  --heartbeat-seconds <s>  time between heartbeats (default: 5)
  --hardware-seconds <s>   time between hardware inventories (default: 60)
  --insecure-http        allow plain http:// to a coordinator on another machine
  --unsafe-process-runtime  without Docker: run jobs as plain processes, NOT isolated
  --allow-registry <host[:port]>  a registry jobs' images may come from; repeat for more
                         (default: docker.io, ghcr.io, nvcr.io, quay.io, registry.k8s.io, public.ecr.aws)

Options for install-service:
  --state-dir <dir>      as above
  --unit-path <path>     where the unit goes (default: /etc/systemd/system/gantry-agent.service)
  --user <user>          the user it runs as (default: you; under sudo, who ran sudo)
`;

/** A command line that does not parse: print it with the usage, exit 2. */
export class UsageError extends Error {
  override name = 'UsageError';
}

export type Invocation = { command: 'help' } | { command: CommandName; args: string[] };

function isCommandName(s: string): s is CommandName {
  return (commandNames as readonly string[]).includes(s);
}

export function parseInvocation(argv: readonly string[]): Invocation {
  const [first, ...rest] = argv;
  if (first === undefined || first === 'help' || first === '--help' || first === '-h') return { command: 'help' };
  if (!isCommandName(first)) throw new UsageError(`unknown command "${first}"`);
  return { command: first, args: rest };
}

export interface HardwareArgs {
  json: boolean;
  workDir: string;
  timeoutMs: number | undefined;
  help: boolean;
}

function parsed<T>(fn: () => T): T {
  try {
    return fn();
  } catch (err) {
    // parseArgs throws TypeErrors with codes such as ERR_PARSE_ARGS_UNKNOWN_OPTION.
    throw new UsageError((err as Error).message);
  }
}

export function parseHardwareArgs(args: readonly string[]): HardwareArgs {
  const { values } = parsed(() =>
    parseArgs({
      args: [...args],
      options: {
        json: { type: 'boolean', default: false },
        'work-dir': { type: 'string', default: '.' },
        timeout: { type: 'string' },
        help: { type: 'boolean', short: 'h', default: false },
      },
      allowPositionals: false,
      strict: true,
    }),
  );
  let timeoutMs: number | undefined;
  if (values.timeout !== undefined) {
    timeoutMs = Number(values.timeout);
    if (!Number.isInteger(timeoutMs) || timeoutMs < 1 || timeoutMs > 600_000) {
      throw new UsageError(`--timeout must be a whole number of ms from 1 to 600000, not "${values.timeout}"`);
    }
  }
  return { json: values.json, workDir: values['work-dir'], timeoutMs, help: values.help };
}
