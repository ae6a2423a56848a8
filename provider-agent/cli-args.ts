// The agent's command line: `gantry-agent <command> [options]`. Each command parses its own
// options here, with node:util parseArgs, and gets back a typed value or a UsageError.
import { parseArgs } from 'node:util';

export const commandNames = ['hardware', 'join', 'run', 'install-service'] as const;
export type CommandName = (typeof commandNames)[number];

export const usage = `Usage: gantry-agent <command> [options]

Commands:
  hardware [--json]      what this machine offers: CPU, memory, disk, GPUs, container runtime
  join                   register this machine with a coordinator (not implemented yet)
  run                    run the agent (not implemented yet)
  install-service        install the agent as a system service (not implemented yet)

Options for hardware:
  --json                 print one JSON object instead of a table
  --work-dir <dir>       the agent's work dir, whose free space is reported (default: .)
  --timeout <ms>         limit for each nvidia-smi call (default: 15000)
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
