import { maxLogLineBytes } from '../../shared/logs.ts';

/** Cuts a line into pieces of at most maxBytes of UTF-8, never inside a character. */
export function cutLine(line: string, maxBytes = maxLogLineBytes): string[] {
  if (line.length * 3 <= maxBytes || Buffer.byteLength(line) <= maxBytes) return [line];
  const out: string[] = [];
  let rest = line;
  while (Buffer.byteLength(rest) > maxBytes) {
    let k = Math.min(rest.length, maxBytes);
    while (Buffer.byteLength(rest.slice(0, k)) > maxBytes) k = Math.floor(k * 0.9);
    // Do not split a surrogate pair.
    const code = rest.charCodeAt(k - 1);
    if (code >= 0xd800 && code <= 0xdbff) k--;
    out.push(rest.slice(0, k));
    rest = rest.slice(k);
  }
  out.push(rest);
  return out;
}

/**
 * Text in, whole lines out: what arrives in pieces of any size is split on "\n" (a trailing
 * "\r" goes with it), and a line longer than maxBytes comes out in pieces. end() gives the
 * last line even without its newline.
 */
export class LineSplitter {
  private partial = '';

  constructor(
    private onLine: (line: string) => void,
    private maxBytes = maxLogLineBytes,
  ) {}

  write(text: string): void {
    let start = 0;
    for (;;) {
      const nl = text.indexOf('\n', start);
      if (nl === -1) break;
      const piece = text.slice(start, nl);
      const line = this.partial ? this.partial + piece : piece;
      this.partial = '';
      this.emit(line.endsWith('\r') ? line.slice(0, -1) : line);
      start = nl + 1;
    }
    if (start < text.length) {
      this.partial += text.slice(start);
      // A line that never ends must not grow without bound: give out its full pieces now.
      if (this.partial.length > this.maxBytes) {
        const pieces = cutLine(this.partial, this.maxBytes);
        this.partial = pieces.pop()!;
        for (const p of pieces) this.onLine(p);
      }
    }
  }

  end(): void {
    if (this.partial) this.emit(this.partial);
    this.partial = '';
  }

  private emit(line: string) {
    for (const p of cutLine(line, this.maxBytes)) this.onLine(p);
  }
}
