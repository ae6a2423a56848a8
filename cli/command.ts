import { parseArgs } from 'node:util';
import { ApiClient } from '../shared/client.ts';
import { cliSettings, resolveLogin, type Login } from './config.ts';
import { UsageError } from './errors.ts';
import { interactive, Painter, Progress } from './output.ts';

// What every command gets: its parsed flags, the streams, and the coordinator to talk to.

export interface Flag {
  type: 'string' | 'boolean';
  short?: string;
  multiple?: boolean;
  /** The value's name in help, e.g. N, URL, SIZE. */
  arg?: string;
  help: string;
}

export interface Parsed {
  values: Record<string, string | boolean | string[] | undefined>;
  positionals: string[];
  /** What came after `--`. */
  rest: string[];
}

export interface Command {
  name: string;
  summary: string;
  /** The synopsis lines, without "usage: ". */
  usage: string[];
  description?: string;
  flags: Record<string, Flag>;
  /** How many positionals before `--`; extra ones are a usage error. */
  positionals: { min: number; max: number };
  /** Whether `-- cmd args` is taken. */
  takesRest?: boolean;
  examples?: string[];
  run(ctx: Context, args: Parsed): Promise<number | void>;
}

export interface Context {
  env: NodeJS.ProcessEnv;
  stdout: NodeJS.WriteStream;
  stderr: NodeJS.WriteStream;
  /** Colour for stdout and for stderr, each decided by its own stream. */
  out: Painter;
  err: Painter;
  /** stdout is a terminal (tables may fit its width). */
  stdoutIsTerminal: boolean;
  /** Fires on Ctrl-C. */
  signal: AbortSignal;
  progress(): Progress;
  connect(opts?: { needKey?: boolean }): Promise<{ api: ApiClient; login: Login }>;
}

export function createContext(env: NodeJS.ProcessEnv, signal: AbortSignal): Context {
  const { stdout, stderr } = process;
  const errInteractive = interactive(stderr, env);
  return {
    env,
    stdout,
    stderr,
    out: new Painter(interactive(stdout, env)),
    err: new Painter(errInteractive),
    stdoutIsTerminal: Boolean(stdout.isTTY),
    signal,
    progress: () => new Progress(stderr, errInteractive, new Painter(errInteractive)),
    async connect(opts = {}) {
      const login = await resolveLogin(env, opts.needKey ?? true);
      const { timeoutMs } = cliSettings(env);
      const api = new ApiClient({ baseUrl: login.coordinator, timeoutMs, ...(login.apiKey ? { token: login.apiKey } : {}) });
      return { api, login };
    },
  };
}

/** node:util parseArgs with our flags; its errors become usage errors that name the command. */
export function parseCommandArgs(cmd: Command, argv: string[]): Parsed {
  const options: Record<string, { type: 'string' | 'boolean'; short?: string; multiple?: boolean }> = {
    help: { type: 'boolean', short: 'h' },
  };
  for (const [name, f] of Object.entries(cmd.flags)) {
    options[name] = { type: f.type, ...(f.short ? { short: f.short } : {}), ...(f.multiple ? { multiple: true } : {}) };
  }
  let parsed;
  try {
    parsed = parseArgs({ args: argv, options, allowPositionals: true, strict: true, tokens: true });
  } catch (err) {
    throw new UsageError(cleanParseError((err as Error).message), cmd.name);
  }
  const terminator = parsed.tokens.find((t) => t.kind === 'option-terminator');
  const before = terminator ? parsed.tokens.filter((t) => t.kind === 'positional' && t.index < terminator.index) : null;
  const positionals = before ? before.map((t) => (t as { value: string }).value) : parsed.positionals;
  const rest = terminator ? parsed.positionals.slice(positionals.length) : [];
  const values = parsed.values as Parsed['values'];
  if (values.help) return { values, positionals, rest };
  if (rest.length && !cmd.takesRest) throw new UsageError(`unexpected arguments after --: ${rest.join(' ')}`, cmd.name);
  if (positionals.length > cmd.positionals.max) {
    const extra = positionals.slice(cmd.positionals.max);
    throw new UsageError(`unexpected argument${extra.length > 1 ? 's' : ''}: ${extra.join(' ')}`, cmd.name);
  }
  if (positionals.length < cmd.positionals.min) throw new UsageError(`missing argument: ${cmd.usage[0]}`, cmd.name);
  return { values, positionals, rest };
}

// parseArgs says e.g. "Unknown option '--gpu'. To specify a positional argument starting with a '-', place it at the
// end of the command after '--', as in '-- \"--gpu\"". The first sentence is what a person needs.
function cleanParseError(message: string): string {
  const first = message.split(/\.\s+(?=To specify|Did you)/)[0]!.replace(/\.$/, '');
  return first.replace(/^Unknown option '([^']+)'/, 'unknown flag $1').replace(/^Option '([^']+)' argument missing/, '$1 needs a value');
}

export function renderHelp(cmd: Command): string {
  const lines = cmd.usage.map((u, i) => `${i === 0 ? 'usage: ' : '       '}gantry ${u}`);
  lines.push('', cmd.summary);
  if (cmd.description) lines.push('', cmd.description);
  const flags = Object.entries(cmd.flags).map(([name, f]) => {
    const left = `${f.short ? `-${f.short}, ` : '    '}--${name}${f.type === 'string' ? ` ${f.arg ?? 'VALUE'}` : ''}`;
    return [left, f.help + (f.multiple ? ' (repeatable)' : '')] as const;
  });
  flags.push(['-h, --help', 'show this help']);
  const width = Math.max(...flags.map(([l]) => l.length));
  lines.push('', 'flags:', ...flags.map(([l, h]) => `  ${l.padEnd(width)}  ${h}`));
  if (cmd.examples?.length) lines.push('', 'examples:', ...cmd.examples.map((e) => `  ${e}`));
  return `${lines.join('\n')}\n`;
}

/** A string flag's value (the last one when given twice). */
export function str(values: Parsed['values'], name: string): string | undefined {
  const v = values[name];
  return Array.isArray(v) ? v[v.length - 1] : typeof v === 'string' ? v : undefined;
}

export function list(values: Parsed['values'], name: string): string[] {
  const v = values[name];
  return Array.isArray(v) ? v : typeof v === 'string' ? [v] : [];
}

/** Runs a flag's parser and turns its complaint into a usage error naming the flag. */
export function flagValue<T>(cmd: string, name: string, text: string | undefined, parse: (t: string) => T): T | undefined {
  if (text === undefined) return undefined;
  try {
    return parse(text);
  } catch (err) {
    throw new UsageError(`--${name}: ${(err as Error).message}`, cmd);
  }
}
