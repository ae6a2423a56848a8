// What the CLI prints: tables, colour and a spinner, each only where a person is watching.
// Colour and the spinner need a terminal and no NO_COLOR (https://no-color.org); piped
// output is plain text a script can read.

export interface Stream {
  write(chunk: string): unknown;
  isTTY?: boolean;
  columns?: number;
}

type Style = 'bold' | 'dim' | 'red' | 'green' | 'yellow' | 'cyan';
const codes: Record<Style, [number, number]> = {
  bold: [1, 22],
  dim: [2, 22],
  red: [31, 39],
  green: [32, 39],
  yellow: [33, 39],
  cyan: [36, 39],
};

/** Whether a stream is a terminal that may get colour and a spinner. */
export function interactive(stream: Stream, env: NodeJS.ProcessEnv): boolean {
  if (!stream.isTTY) return false;
  if (env.NO_COLOR !== undefined && env.NO_COLOR !== '') return false;
  return env.TERM !== 'dumb';
}

export class Painter {
  constructor(readonly enabled: boolean) {}
  paint(style: Style, text: string): string {
    if (!this.enabled || !text) return text;
    const [on, off] = codes[style];
    return `\x1b[${on}m${text}\x1b[${off}m`;
  }
  status(status: string): string {
    const style: Style | null =
      status === 'succeeded' || status === 'online'
        ? 'green'
        : status === 'failed'
          ? 'red'
          : status === 'cancelled' || status === 'offline' || status === 'draining'
            ? 'yellow'
            : status === 'running' || status === 'leased'
              ? 'cyan'
              : null;
    return style ? this.paint(style, status) : status;
  }
}

// Every string that came from elsewhere (a node's error, log or name, a coordinator's message)
// passes through printable() before a terminal shows it: an escape sequence could retitle the
// window, rewrite the screen or hide a line. Escape sequences (ECMA-48: CSI, the OSC/DCS/APC
// string kinds, up to their end or the line's, two-byte ESC ones) are dropped; other control
// characters become "?". A job's log keeps its colours (SGR) and its tabs, carriage returns
// and newlines.
// eslint-disable-next-line no-control-regex
const unprintable = /\x1b\[[0-?]*[ -/]*[@-~]|\x1b[\]PX^_][^\n]*?(?:\x07|\x1b\\|(?=\n)|$)|\x1b[ -/]*[0-~]|[\u0000-\u001f\u007f-\u009f\u2028\u2029\u202a-\u202e\u2066-\u2069]/g;
// eslint-disable-next-line no-control-regex
const sgr = /^\x1b\[[0-9;:]*m$/;

export function printable(text: string, as: 'text' | 'log' = 'text'): string {
  return text.replace(unprintable, (s) => {
    if (as === 'log' && (s === '\t' || s === '\r' || s === '\n' || sgr.test(s))) return s;
    if (s[0] === '\x1b' && s.length > 1) return '';
    if (as === 'log' && /[\u202a-\u202e\u2066-\u2069]/.test(s)) return s;
    return '?';
  });
}

// eslint-disable-next-line no-control-regex
const ansi = /\x1b\[[0-9;]*m/g;
export const visibleLength = (s: string) => [...s.replace(ansi, '')].length;

export interface Column<T> {
  header: string;
  value: (row: T) => string;
  /** Right-aligned (numbers). */
  right?: boolean;
  /** May be shortened with … when the table is wider than the terminal. */
  flex?: boolean;
  /** Painted after measuring, so escape codes never upset the widths. */
  paint?: (text: string, row: T) => string;
}

function truncate(text: string, width: number): string {
  const chars = [...text];
  return chars.length <= width ? text : `${chars.slice(0, Math.max(1, width - 1)).join('')}…`;
}

/** A plain text table: a header row, two spaces between columns, no trailing spaces. */
export function table<T>(columns: Column<T>[], rows: T[], opts: { width?: number; painter?: Painter } = {}): string {
  const painter = opts.painter ?? new Painter(false);
  const cells = rows.map((row) => columns.map((c) => printable(c.value(row))));
  const widths = columns.map((c, i) => Math.max(visibleLength(c.header), ...cells.map((r) => visibleLength(r[i]!))));
  if (opts.width) {
    // Shorten the flexible columns, widest first, until the table fits.
    const total = () => widths.reduce((a, b) => a + b, 0) + 2 * (widths.length - 1);
    const flexible = columns.map((c, i) => (c.flex ? i : -1)).filter((i) => i >= 0);
    while (total() > opts.width) {
      const widest = flexible.reduce((best, i) => (best < 0 || widths[i]! > widths[best]! ? i : best), -1);
      if (widest < 0 || widths[widest]! <= Math.max(8, visibleLength(columns[widest]!.header))) break;
      widths[widest]! -= 1;
    }
  }
  const pad = (text: string, i: number) => {
    const t = truncate(text, widths[i]!);
    const gap = ' '.repeat(widths[i]! - visibleLength(t));
    return { text: t, gap };
  };
  const line = (texts: string[], paintCell: (t: string, i: number) => string) =>
    texts
      .map((text, i) => {
        const { text: t, gap } = pad(text, i);
        const painted = paintCell(t, i);
        return columns[i]!.right ? gap + painted : i === texts.length - 1 ? painted : painted + gap;
      })
      .join('  ')
      .trimEnd();
  const out = [line(columns.map((c) => c.header), (t) => painter.paint('bold', t))];
  rows.forEach((row, r) => out.push(line(cells[r]!, (t, i) => columns[i]!.paint?.(t, row) ?? t)));
  return `${out.join('\n')}\n`;
}

/** Aligned "key  value" lines, for one object. */
export function details(pairs: [string, string | null | undefined][], painter = new Painter(false)): string {
  const shown = pairs.filter((p): p is [string, string] => p[1] !== null && p[1] !== undefined && p[1] !== '');
  const width = Math.max(0, ...shown.map(([k]) => k.length));
  return shown.map(([k, v]) => `${painter.paint('dim', k.padEnd(width))}  ${printable(v)}`).join('\n') + '\n';
}

/** "3m ago", "2h ago", "just now": for tables. */
export function ago(iso: string | null | undefined, now = Date.now()): string {
  if (!iso) return '-';
  const s = Math.round((now - Date.parse(iso)) / 1000);
  if (s < 5) return 'just now';
  if (s < 60) return `${s}s ago`;
  if (s < 3600) return `${Math.floor(s / 60)}m ago`;
  if (s < 86_400) return `${Math.floor(s / 3600)}h ago`;
  return `${Math.floor(s / 86_400)}d ago`;
}

const frames = ['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏'];

/**
 * What a long wait shows: on a terminal a spinner line redrawn in place; elsewhere each new
 * state once, as a plain line, so a CI log still says what happened.
 */
export class Progress {
  private text = '';
  private lastPrinted = '';
  private frame = 0;
  private timer: NodeJS.Timeout | null = null;

  constructor(
    private stream: Stream,
    private spin: boolean,
    private painter: Painter,
  ) {}

  /** key says what counts as news off a terminal (a state, not its ticking clock); default the text. */
  update(text: string, key: string = text) {
    const clean = printable(text);
    if (!this.spin) {
      if (key !== this.lastPrinted) this.stream.write(`${clean}\n`);
      this.lastPrinted = key;
      return;
    }
    if (clean === this.text) return;
    this.text = clean;
    this.draw();
    this.timer ??= setInterval(() => this.draw(), 100);
    this.timer.unref();
  }

  private draw() {
    this.frame = (this.frame + 1) % frames.length;
    // A pty without a size reports 0 columns.
    const width = (this.stream.columns || 80) - 3;
    this.stream.write(`\r\x1b[K${this.painter.paint('cyan', frames[this.frame]!)} ${truncate(this.text, width)}`);
  }

  /** Clears the spinner line (before other output, or at the end). */
  stop() {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    if (this.spin && this.text) this.stream.write('\r\x1b[K');
    this.text = '';
  }

  /** Replaces the spinner with a final line. */
  done(line: string) {
    this.stop();
    this.stream.write(`${printable(line)}\n`);
  }
}
