import { describe, expect, it } from 'vitest';
import { cutLine, LineSplitter } from '../../../../provider-agent/logs/lines.ts';
import { LogShipper } from '../../../../provider-agent/logs/shipper.ts';
import type { OutgoingChunk, SendOutcome } from '../../../../provider-agent/logs/transport.ts';

/** A coordinator in miniature: keeps chunks by seq the way job_logs does. */
function store(opts: { failFirst?: number; takenBelow?: number; capAfter?: number; goneAfter?: number } = {}) {
  const rows = new Map<number, OutgoingChunk>();
  let calls = 0;
  let failures = opts.failFirst ?? 0;
  const transport = async (c: OutgoingChunk): Promise<SendOutcome> => {
    calls++;
    await new Promise((r) => setTimeout(r, 1));
    if (failures > 0) {
      failures--;
      throw new Error('connection refused');
    }
    if (opts.goneAfter !== undefined && rows.size >= opts.goneAfter) return { kind: 'gone', why: 'stale lease' };
    if (opts.takenBelow !== undefined && c.seq < opts.takenBelow) return { kind: 'renumber', nextSeq: opts.takenBelow };
    if (opts.capAfter !== undefined && c.stream !== 'system' && rows.size >= opts.capAfter) return { kind: 'capped' };
    const had = rows.get(c.seq);
    if (had && JSON.stringify(had) !== JSON.stringify(c)) throw new Error(`seq ${c.seq} reused for other lines`);
    rows.set(c.seq, structuredClone(c));
    return { kind: 'stored' };
  };
  const lines = (stream: string) =>
    [...rows.entries()]
      .sort(([a], [b]) => a - b)
      .filter(([, c]) => c.stream === stream)
      .flatMap(([, c]) => c.lines);
  return { rows, transport, lines, calls: () => calls };
}

describe('line splitting', () => {
  it('splits on newlines across writes, keeps empty lines, drops the \\r of \\r\\n, and ends a last partial line', () => {
    const out: string[] = [];
    const s = new LineSplitter((l) => out.push(l));
    s.write('a\nb');
    s.write('c\r\n\nd');
    s.end();
    expect(out).toEqual(['a', 'bc', '', 'd']);
  });

  it('cuts an endless line into bounded pieces without splitting a character', () => {
    const out: string[] = [];
    const s = new LineSplitter((l) => out.push(l), 10);
    s.write('0123456789abcdef');
    expect(out).toEqual(['0123456789']);
    s.write('é€😀\n');
    s.end();
    expect(out.join('')).toBe('0123456789abcdefé€😀');
    for (const p of out) expect(Buffer.byteLength(p)).toBeLessThanOrEqual(10);
    expect(cutLine('😀😀😀', 5)).toEqual(['😀', '😀', '😀']);
  });
});

describe('log shipper', () => {
  it('ships every line, in order per stream, in numbered chunks bounded in bytes and lines', async () => {
    const s = store();
    const shipper = new LogShipper({ transport: s.transport, chunkBytes: 1000, chunkLines: 50, flushMs: 20 });
    for (let i = 0; i < 2000; i++) await shipper.write(i % 3 ? 'stdout' : 'stderr', `line ${i}\n`);
    const stats = await shipper.close();
    const want = (pick: (i: number) => boolean) => Array.from({ length: 2000 }, (_, i) => i).filter(pick).map((i) => `line ${i}`);
    expect(s.lines('stdout')).toEqual(want((i) => i % 3 !== 0));
    expect(s.lines('stderr')).toEqual(want((i) => i % 3 === 0));
    expect([...s.rows.keys()].sort((a, b) => a - b)).toEqual([...Array(s.rows.size).keys()]);
    for (const c of s.rows.values()) {
      expect(c.lines.length).toBeLessThanOrEqual(50);
      expect(c.lines.reduce((n, l) => n + Buffer.byteLength(l) + 1, 0)).toBeLessThanOrEqual(1000);
    }
    expect(stats).toMatchObject({ shippedLines: 2000, droppedLines: 0, stopped: null });
  });

  it('sends a quiet job’s last line within the flush time, before close', async () => {
    const s = store();
    const shipper = new LogShipper({ transport: s.transport, flushMs: 50 });
    shipper.write('stdout', 'only line\n');
    const deadline = Date.now() + 5000;
    while (!s.lines('stdout').length && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
    expect(s.lines('stdout')).toEqual(['only line']);
    await shipper.close();
  });

  it('retries a chunk under the same seq until it is taken', async () => {
    const s = store({ failFirst: 3 });
    const shipper = new LogShipper({ transport: s.transport, retryMinMs: 1, retryMaxMs: 5 });
    shipper.write('stdout', 'a\nb\n');
    await shipper.close();
    expect(s.lines('stdout')).toEqual(['a', 'b']);
    expect([...s.rows.keys()]).toEqual([0]);
    expect(s.calls()).toBe(4);
  });

  it('renumbers after the seqs an earlier run of the agent used', async () => {
    const s = store({ takenBelow: 7 });
    const shipper = new LogShipper({ transport: s.transport, chunkLines: 1 });
    for (const l of ['x', 'y', 'z']) shipper.write('stdout', `${l}\n`);
    await shipper.close();
    expect([...s.rows.keys()]).toEqual([7, 8, 9]);
    expect(s.lines('stdout')).toEqual(['x', 'y', 'z']);
  });

  it('caps a job’s output and ends with a line saying how much was dropped', async () => {
    const s = store();
    const shipper = new LogShipper({ transport: s.transport, capBytes: 100 });
    for (let i = 0; i < 100; i++) shipper.write('stdout', `${String(i).padStart(9, '0')}\n`);
    const stats = await shipper.close();
    expect(s.lines('stdout')).toHaveLength(10);
    expect(stats).toMatchObject({ droppedLines: 90, droppedBytes: 900 });
    expect(s.lines('system')).toEqual(['[gantry] output past the 100-byte log cap was dropped: 90 lines, 900 bytes']);
  });

  it('stops shipping when the lease is gone, and never blocks its writer', async () => {
    const s = store({ goneAfter: 1 });
    const shipper = new LogShipper({ transport: s.transport, chunkLines: 1, maxQueuedBytes: 10 });
    for (let i = 0; i < 100; i++) await shipper.write('stdout', `${i}\n`);
    const stats = await shipper.close();
    expect(stats.stopped).toBe('stale lease');
    expect(s.rows.size).toBe(1);
  });

  it('holds at most about maxQueuedBytes while the coordinator is slow: the writer waits', async () => {
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    const taken: OutgoingChunk[] = [];
    const shipper = new LogShipper({
      transport: async (c) => {
        await gate;
        taken.push(c);
        return { kind: 'stored' };
      },
      chunkBytes: 1000,
      maxQueuedBytes: 10_000,
    });
    let written = 0;
    const writer = (async () => {
      for (let i = 0; i < 5000; i++) {
        await shipper.write('stdout', `${'x'.repeat(99)}\n`);
        written++;
      }
    })();
    await new Promise((r) => setTimeout(r, 100));
    // 10,000 bytes queued at 100 bytes a line: the writer waits at about 100 lines, not 5,000.
    expect(written).toBeLessThanOrEqual(101);
    release();
    await writer;
    await shipper.close();
    expect(taken.flatMap((c) => c.lines)).toHaveLength(5000);
  });
});
