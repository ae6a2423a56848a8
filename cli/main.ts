import { parseCommandArgs, renderHelp, createContext, type Command } from './command.ts';
import { describeError, exitCodes, ExitWith, UsageError } from './errors.ts';
import { printable } from './output.ts';
import { cancel, job, jobs, tasks, wait } from './commands/jobs.ts';
import { login, logout } from './commands/login.ts';
import { logs, outputs } from './commands/logs.ts';
import { nodes, tokens } from './commands/nodes.ts';
import { offers, pool } from './commands/offers.ts';
import { serviceTokens } from './commands/services.ts';
import { submit } from './commands/submit.ts';
import { usage } from './commands/usage.ts';
import { balance, ledger } from './commands/ledger.ts';
import { gantryVersion } from '../shared/version.ts';
import { cliSettings } from './config.ts';

// `gantry`: the command line for clients and providers. Every failure is one line on stderr
// and a non-zero exit; a stack trace only with GANTRY_DEBUG=1.

const groups: [string, Command[]][] = [
  ['Run jobs', [submit, jobs, job, tasks, logs, wait, cancel, outputs, serviceTokens]],
  ['The pool', [pool, offers, usage]],
  ['Money', [balance, ledger]],
  ['Providers', [nodes, tokens]],
  ['Your login', [login, logout]],
];
const commands = new Map(groups.flatMap(([, cs]) => cs.map((c) => [c.name, c] as const)));

function topHelp(): string {
  const width = Math.max(...[...commands.keys()].map((n) => n.length));
  const lines = ['usage: gantry <command> [flags]', '', 'Gantry: a GPU compute marketplace. Submit and follow jobs, see the pool, run nodes.'];
  for (const [title, cs] of groups) {
    lines.push('', `${title}:`);
    for (const c of cs) lines.push(`  ${c.name.padEnd(width)}  ${c.summary}`);
  }
  lines.push(
    '',
    'Run gantry <command> --help for its flags.',
    '',
    'environment:',
    '  GANTRY_URL, GANTRY_API_KEY  the coordinator and key to use, over the stored login',
    '  XDG_CONFIG_HOME             where the login is stored (default ~/.config): gantry/config.json',
    '  NO_COLOR                    no colour and no spinner (neither is used when output is not a terminal)',
    '  GANTRY_DEBUG=1              print stack traces of unexpected errors',
    '',
    'exit codes:',
    '  0    success',
    '  1    an error: the coordinator refused or cannot be reached, a job or file was not found',
    '  2    a usage error: an unknown command or flag, a bad value, an invalid job file',
    '  130  interrupted (Ctrl-C); a followed job keeps running',
    '  submit --follow and wait exit with the job\'s own exit code',
  );
  return `${lines.join('\n')}\n`;
}

function version(): string {
  return gantryVersion;
}

async function main(argv: string[]): Promise<number> {
  const controller = new AbortController();
  let interrupted = false;
  process.on('SIGINT', () => {
    if (interrupted) process.exit(exitCodes.interrupted);
    interrupted = true;
    controller.abort();
    // A command that follows something stops within this grace; anything else is cut short.
    setTimeout(() => {
      process.stderr.write('\ninterrupted\n');
      process.exit(exitCodes.interrupted);
    }, 1500).unref();
  });
  // `gantry jobs | head` closes the pipe early: that is not an error.
  process.stdout.on('error', (err: NodeJS.ErrnoException) => {
    if (err.code === 'EPIPE') process.exit(exitCodes.ok);
  });

  const first = argv[0];
  if (first === undefined || first === '--help' || first === '-h' || first === 'help') {
    const asked = argv[1] && first === 'help' ? commands.get(argv[1]) : undefined;
    process.stdout.write(asked ? renderHelp(asked) : topHelp());
    return first === undefined ? exitCodes.usage : exitCodes.ok;
  }
  if (first === '--version' || first === '-V') {
    process.stdout.write(`gantry ${version()}\n`);
    return exitCodes.ok;
  }
  const cmd = commands.get(first);
  let name: string | undefined = cmd?.name;
  try {
    if (!cmd) {
      if (first.startsWith('-')) throw new UsageError(`unknown flag ${first}; flags come after the command`);
      const near = [...commands.keys()].find((n) => n.startsWith(first.slice(0, 3)));
      throw new UsageError(`unknown command "${first}"${near ? ` (did you mean ${near}?)` : ''}`);
    }
    const args = parseCommandArgs(cmd, argv.slice(1));
    if (args.values.help) {
      process.stdout.write(renderHelp(cmd));
      return exitCodes.ok;
    }
    const ctx = createContext(process.env, controller.signal);
    const code = await cmd.run(ctx, args);
    return code ?? exitCodes.ok;
  } catch (err) {
    if (err instanceof ExitWith) return err.exitCode;
    if (controller.signal.aborted) {
      process.stderr.write(`interrupted${name === 'submit' || name === 'logs' || name === 'wait' ? '; the job keeps running' : ''}\n`);
      return exitCodes.interrupted;
    }
    const { message, exitCode } = describeError(err, name);
    // "file:line: ..." lines stay as they are, so editors can jump to them. A message may quote
    // what a coordinator or a node said: each line is made printable.
    for (const line of message.split('\n').map((l) => printable(l))) {
      process.stderr.write(/^[^\s:]+:\d+: /.test(line) ? `${line}\n` : `gantry${name ? ` ${name}` : ''}: ${line}\n`);
    }
    if (cliSettings(process.env).debug && err instanceof Error) process.stderr.write(`${err.stack}\n`);
    return exitCode;
  }
}

const code = await main(process.argv.slice(2));
// Let stdout drain before leaving; a pending spinner timer is unref'd and does not hold us.
process.exitCode = code;
if (process.stdout.writableLength === 0) process.exit(code);
else process.stdout.once('drain', () => process.exit(code));
