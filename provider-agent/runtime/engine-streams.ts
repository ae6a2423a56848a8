import { StringDecoder } from 'node:string_decoder';

export type OutputStream = 'stdout' | 'stderr';

/**
 * Splits the engine's multiplexed output (8-byte headers: stream 1 = stdout, 2 = stderr, then
 * a big-endian length) into frames, reading only as fast as the caller consumes them.
 */
export async function* demux(source: AsyncIterable<Buffer | Uint8Array | string>): AsyncGenerator<{ stream: OutputStream; data: Buffer }> {
  let buf: Buffer = Buffer.alloc(0);
  for await (const piece of source) {
    const b = typeof piece === 'string' ? Buffer.from(piece) : Buffer.from(piece.buffer, piece.byteOffset, piece.byteLength);
    buf = buf.length ? Buffer.concat([buf, b]) : b;
    let off = 0;
    while (buf.length - off >= 8) {
      const size = buf.readUInt32BE(off + 4);
      if (buf.length - off - 8 < size) break;
      const type = buf[off];
      const data = Buffer.from(buf.subarray(off + 8, off + 8 + size));
      off += 8 + size;
      // 0 is stdin (never attached here); anything else but 2 is read as stdout.
      if (type !== 0) yield { stream: type === 2 ? 'stderr' : 'stdout', data };
    }
    buf = off ? Buffer.from(buf.subarray(off)) : buf;
  }
}

/**
 * A log frame read with timestamps=true starts with the engine's RFC 3339 time (nanoseconds)
 * and a space. Returns the time normalized to nine fraction digits (so times compare as
 * strings) and the rest.
 */
export function splitTimestamp(frame: Buffer): { ts: string | null; payload: Buffer } {
  const space = frame.indexOf(0x20);
  if (space < 20 || space > 40) return { ts: null, payload: frame };
  const raw = frame.subarray(0, space).toString('latin1');
  const m = /^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?Z$/.exec(raw);
  if (!m) return { ts: null, payload: frame };
  return { ts: `${m[1]}.${(m[2] ?? '').padEnd(9, '0')}Z`, payload: frame.subarray(space + 1) };
}

/** A normalized timestamp as the engine's `since` parameter: UNIX seconds with nanoseconds. */
export function sinceParam(ts: string): string {
  const [secs, frac] = ts.slice(0, -1).split('.');
  return `${Math.floor(Date.parse(`${secs}Z`) / 1000)}.${frac ?? '000000000'}`;
}

/** Text per stream from bytes, never cutting a UTF-8 character in two. */
export class StreamDecoders {
  private d = { stdout: new StringDecoder('utf8'), stderr: new StringDecoder('utf8') };
  write(stream: OutputStream, data: Buffer): string {
    return this.d[stream].write(data);
  }
  end(stream: OutputStream): string {
    return this.d[stream].end();
  }
}

/** JSON documents, one a line (the engine's stats and pull progress streams). */
export async function* jsonLines(source: AsyncIterable<Buffer | string>): AsyncGenerator<unknown> {
  let rest = '';
  for await (const piece of source) {
    rest += typeof piece === 'string' ? piece : piece.toString('utf8');
    let nl: number;
    while ((nl = rest.indexOf('\n')) >= 0) {
      const line = rest.slice(0, nl).trim();
      rest = rest.slice(nl + 1);
      if (!line) continue;
      try {
        yield JSON.parse(line);
      } catch {
        /* a torn or foreign line: skip it */
      }
    }
  }
  if (rest.trim()) {
    try {
      yield JSON.parse(rest);
    } catch {
      /* ignore */
    }
  }
}
