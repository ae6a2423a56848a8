import { describe, expect, it } from 'vitest';
import { interactive, Painter, printable, Progress, table, type Column } from '../../../cli/output.ts';

interface Row {
  id: string;
  name: string;
  n: number;
}
const cols: Column<Row>[] = [
  { header: 'ID', value: (r) => r.id },
  { header: 'NAME', value: (r) => r.name, flex: true },
  { header: 'N', value: (r) => String(r.n), right: true },
];

describe('tables', () => {
  it('aligns columns, right-aligns numbers and leaves no trailing spaces', () => {
    const out = table(cols, [
      { id: 'a', name: 'first', n: 1 },
      { id: 'bbb', name: 'x', n: 100 },
    ]);
    expect(out).toBe(['ID   NAME     N', 'a    first    1', 'bbb  x      100', ''].join('\n'));
  });

  it('shortens flexible columns to fit a width', () => {
    const out = table(cols, [{ id: 'a', name: 'a very long job name that goes on', n: 1 }], { width: 24 });
    for (const line of out.trimEnd().split('\n')) expect([...line].length).toBeLessThanOrEqual(24);
    expect(out).toContain('…');
  });

  it('never lets a name drive the terminal', () => {
    const out = table(cols, [{ id: 'a', name: 'evil\x1b]0;pwned\x07\x1b[2J', n: 1 }]);
    expect(out).not.toMatch(/\x1b|\x07/);
    expect(printable('a\nb\u009bc')).toBe('a?b?c');
  });

  it('keeps only colours, tabs, carriage returns and newlines of a log, and nothing of the kind in other text', () => {
    const hostile = 'a\x1b[31mred\x1b[0m\tb\rc\n\x1b]0;title\x07\x1b]8;;http://x\x1b\\link\x1b[2J\x1b[1;1H\x1bc\x1bP1$q\x1b\\\x07\b\u009b2J\u202eevil\x1b';
    expect(printable(hostile, 'log')).toBe('a\x1b[31mred\x1b[0m\tb\rc\nlink???2J\u202eevil?');
    expect(printable(hostile)).toBe('ared?b?c?link???2J?evil?');
    // Only SGR survives in a log: whatever else is left has no ESC in it.
    expect(printable(hostile, 'log').replace(/\x1b\[[0-9;]*m/g, '')).not.toMatch(/[\x00-\x08\x0b-\x0c\x0e-\x1f\x7f-\x9f]/);
    // A string never ended hides the rest of its line, not the lines after it.
    expect(printable('a\x1b]0;never ended\nnext line\n', 'log')).toBe('a\nnext line\n');
  });

  it('paints only when colour is on, and measures widths without the escape codes', () => {
    const painted = table(cols, [{ id: 'a', name: 'x', n: 1 }], { painter: new Painter(true) });
    expect(painted).toContain('\x1b[1mID\x1b[22m');
    expect(table(cols, [{ id: 'a', name: 'x', n: 1 }], { painter: new Painter(false) })).not.toContain('\x1b');
  });
});

describe('terminal detection', () => {
  const tty = { isTTY: true, write: () => true };
  it('is interactive only on a terminal without NO_COLOR or TERM=dumb', () => {
    expect(interactive(tty, {})).toBe(true);
    expect(interactive(tty, { NO_COLOR: '1' })).toBe(false);
    expect(interactive(tty, { NO_COLOR: '' })).toBe(true);
    expect(interactive(tty, { TERM: 'dumb' })).toBe(false);
    expect(interactive({ isTTY: false, write: () => true }, {})).toBe(false);
    expect(interactive({ write: () => true }, {})).toBe(false);
  });

  it('prints each new state once as a plain line when it cannot spin', () => {
    const written: string[] = [];
    const p = new Progress({ write: (s: string) => written.push(s) }, false, new Painter(false));
    p.update('job queued');
    p.update('job queued');
    p.update('job running');
    p.stop();
    expect(written).toEqual(['job queued\n', 'job running\n']);
  });

  it('redraws one line in place when it can, and clears it at the end', () => {
    const written: string[] = [];
    const p = new Progress({ write: (s: string) => written.push(s), isTTY: true, columns: 40 }, true, new Painter(false));
    p.update('job queued');
    p.update('job running');
    p.stop();
    expect(written.every((w) => w.startsWith('\r\x1b[K'))).toBe(true);
    expect(written.at(-1)).toBe('\r\x1b[K');
    expect(written.join('')).not.toContain('\n');
  });

  it('shows the whole line on a terminal that reports no width', () => {
    const written: string[] = [];
    const p = new Progress({ write: (s: string) => written.push(s), isTTY: true, columns: 0 }, true, new Painter(false));
    p.update('job_x queued 3s: no node is online');
    p.stop();
    expect(written[0]).toContain('job_x queued 3s: no node is online');
  });
});
