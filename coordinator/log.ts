// One JSON line per record on stdout; callers pass fields, never secrets.
export type LogFields = Record<string, unknown>;
export interface Logger {
  info(msg: string, fields?: LogFields): void;
  warn(msg: string, fields?: LogFields): void;
  error(msg: string, fields?: LogFields): void;
}

export function jsonLogger(write: (line: string) => void = (l) => process.stdout.write(l)): Logger {
  const emit = (level: string) => (msg: string, fields?: LogFields) =>
    write(`${JSON.stringify({ t: new Date().toISOString(), level, msg, ...fields })}\n`);
  return { info: emit('info'), warn: emit('warn'), error: emit('error') };
}

export const silentLogger: Logger = { info() {}, warn() {}, error() {} };

/**
 * An error as a log line may show it: a failed query's SQL and parameters are left out (they
 * hold job specs with their env values), and so are a database error's detail and context
 * fields (which quote the values it refused). Its stack frames stay.
 */
export function describeFailure(err: unknown): string {
  if (!(err instanceof Error)) return String(err);
  const frames = (e: Error) => (e.stack ?? '').split('\n').filter((l) => /^\s+at /.test(l)).join('\n');
  const withFrames = (head: string, e: Error) => [head, frames(e)].filter(Boolean).join('\n');
  const query = err as Error & { query?: unknown; params?: unknown; cause?: unknown };
  if (query.query !== undefined || query.params !== undefined) {
    const cause = query.cause instanceof Error ? query.cause : null;
    const code = (cause as { code?: unknown } | null)?.code;
    return withFrames(`${err.name}: a query failed${cause ? `: ${cause.message}${code ? ` (${String(code)})` : ''}` : ''}`, err);
  }
  return withFrames(`${err.name}: ${err.message}`, err);
}
