import { describe, expect, it } from 'vitest';
import { serverSentEvents } from '../../../cli/api.ts';

const streamOf = (...parts: string[]) =>
  new ReadableStream<Uint8Array>({
    start(c) {
      for (const p of parts) c.enqueue(new TextEncoder().encode(p));
      c.close();
    },
  });

async function collect(body: ReadableStream<Uint8Array>) {
  const out = [];
  for await (const ev of serverSentEvents(body)) out.push(ev);
  return out;
}

describe('server-sent events', () => {
  it('reads events split anywhere across chunks, with ids, comments and multi-line data', async () => {
    const got = await collect(streamOf('event: log\nid: 0\ndata: {"a"', ':1}\n\n: keepalive\n\n', 'data: one\r\ndata: two\r\n\r\nevent: end\ndata: {}\n\n'));
    expect(got).toEqual([
      { event: 'log', id: '0', data: '{"a":1}' },
      { event: 'message', id: '0', data: 'one\ntwo' },
      { event: 'end', id: '0', data: '{}' },
    ]);
  });

  it('drops an event the stream cut off before its blank line', async () => {
    expect(await collect(streamOf('event: log\ndata: complete\n\nevent: log\ndata: cut'))).toEqual([{ event: 'log', data: 'complete' }]);
  });

  it('keeps an event its name when a \\r\\n line ending is split across chunks', async () => {
    // The coordinator's frames end lines in \r\n; a proxy may cut a chunk between the two.
    const got = await collect(streamOf('event: end\r', '\ndata: {"reason":"finished"}\r', '\n\r', '\nevent: log\r\ndata: x\r\n\r\n'));
    expect(got).toEqual([
      { event: 'end', data: '{"reason":"finished"}' },
      { event: 'log', data: 'x' },
    ]);
  });
});
