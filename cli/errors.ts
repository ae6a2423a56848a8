import { ApiRequestError, MalformedAnswerError, UnreachableError } from '../shared/client.ts';

/** Exit codes, as `gantry --help` documents them. */
export const exitCodes = {
  ok: 0,
  error: 1,
  usage: 2,
  /** Interrupted with Ctrl-C. */
  interrupted: 130,
} as const;

/** Something the user can fix: one line on stderr and exit 1. */
export class CliError extends Error {
  constructor(
    message: string,
    readonly exitCode: number = exitCodes.error,
  ) {
    super(message);
  }
}

/** A bad command line: a flag, an argument or a job file. Exit 2. */
export class UsageError extends CliError {
  constructor(
    message: string,
    readonly command?: string,
  ) {
    super(message, exitCodes.usage);
  }
}

/** Leaves the process with a code that is not an error of its own (a followed job's exit code). */
export class ExitWith extends Error {
  constructor(readonly exitCode: number) {
    super(`exit ${exitCode}`);
  }
}

/** The one line a user reads for any failure, and the code to exit with. */
export function describeError(err: unknown, command: string | undefined): { message: string; exitCode: number } {
  if (err instanceof UsageError) {
    const cmd = err.command ?? command;
    // A list of problems (a job file's) stands alone; a single line gets the pointer to help.
    const hint = err.message.includes('\n') ? '' : cmd ? ` (see gantry ${cmd} --help)` : ' (see gantry --help)';
    return { message: `${err.message}${hint}`, exitCode: err.exitCode };
  }
  if (err instanceof CliError) return { message: err.message, exitCode: err.exitCode };
  if (err instanceof UnreachableError || err instanceof MalformedAnswerError) return { message: err.message, exitCode: exitCodes.error };
  if (err instanceof ApiRequestError) return { message: describeProblem(err), exitCode: exitCodes.error };
  const e = err as NodeJS.ErrnoException;
  if (e?.code === 'ENOENT' && e.path) return { message: `no such file: ${e.path}`, exitCode: exitCodes.error };
  if (e?.code === 'EACCES' && e.path) return { message: `permission denied: ${e.path}`, exitCode: exitCodes.error };
  return { message: `unexpected error: ${e?.message ?? String(err)}`, exitCode: exitCodes.error };
}

function describeProblem(err: ApiRequestError): string {
  const p = err.problem;
  const detail = p?.detail ?? p?.title ?? `HTTP ${err.status}`;
  const fields = p?.errors?.length ? p.errors.map((f) => (f.path ? `${f.path}: ${f.message}` : f.message)).join('; ') : null;
  switch (err.status) {
    case 401:
      return `the coordinator refused the API key (${detail}); run gantry login with a valid key`;
    case 403:
      return `not allowed: ${detail}`;
    case 404:
      // No route means the coordinator is older than this command, not that a thing is missing.
      if (p?.code === 'no_route') return `this coordinator does not offer that yet (${detail})`;
      return detail;
    default:
      if (err.status >= 500) {
        const id = p?.instance ? `, request id ${p.instance}` : '';
        return `the coordinator failed (HTTP ${err.status}: ${detail}${id})`;
      }
      return fields ? `the coordinator refused the request: ${fields}` : detail;
  }
}
