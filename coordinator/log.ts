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
