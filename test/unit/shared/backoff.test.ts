import { describe, expect, it } from 'vitest';
import { Backoff, backoffDelay, retry } from '../../../shared/backoff.ts';

const low = () => 0;
const high = () => 0.999_999;

describe('backoffDelay', () => {
  it('doubles from the first wait up to the cap', () => {
    const ceilings = [1, 2, 3, 4, 5, 6, 40].map((n) => backoffDelay(n, { initialMs: 500, maxMs: 10_000, random: high }));
    expect(ceilings).toEqual([500, 1000, 2000, 4000, 8000, 10_000, 10_000]);
  });

  it('jitters each wait within its upper half, so the cap stays a cap', () => {
    expect(backoffDelay(3, { initialMs: 500, maxMs: 10_000, random: low })).toBe(1000);
    expect(backoffDelay(3, { initialMs: 500, maxMs: 10_000, random: () => 0.5 })).toBe(1500);
    for (let i = 0; i < 1000; i++) {
      const d = backoffDelay(1 + (i % 30), { initialMs: 500, maxMs: 10_000 });
      expect(d).toBeGreaterThanOrEqual(250);
      expect(d).toBeLessThanOrEqual(10_000);
    }
  });

  it('takes another growth factor, and survives a very long outage', () => {
    expect([1, 2, 3].map((n) => backoffDelay(n, { initialMs: 2000, maxMs: 32_000, factor: 4, random: high }))).toEqual([2000, 8000, 32_000]);
    expect(backoffDelay(1_000_000, { initialMs: 500, maxMs: 60_000, random: high })).toBe(60_000);
    expect(backoffDelay(0, { initialMs: 500, maxMs: 60_000, random: high })).toBe(500);
  });
});

describe('Backoff', () => {
  it('counts failures in a row and starts over after a success', () => {
    const b = new Backoff({ initialMs: 100, maxMs: 1000, random: high });
    expect([b.next(), b.next(), b.next()]).toEqual([100, 200, 400]);
    expect(b.failures).toBe(3);
    b.reset();
    expect(b.next()).toBe(100);
  });
});

describe('retry', () => {
  it('tries again until the call passes, telling each retry with its wait', async () => {
    const seen: [number, number][] = [];
    let calls = 0;
    const out = await retry(
      async () => {
        if (++calls < 3) throw new Error(`fail ${calls}`);
        return 'ok';
      },
      { initialMs: 1, maxMs: 4, random: high, onRetry: (_e, failures, delayMs) => seen.push([failures, delayMs]) },
    );
    expect(out).toBe('ok');
    expect(seen).toEqual([
      [1, 1],
      [2, 2],
    ]);
  });

  it('throws the last error once its tries are used, and at once for an error that will not pass', async () => {
    let calls = 0;
    await expect(retry(async () => Promise.reject(new Error(`fail ${++calls}`)), { initialMs: 1, maxMs: 1, tries: 3 })).rejects.toThrow('fail 3');
    calls = 0;
    const final = retry(async () => Promise.reject(new Error(`final ${++calls}`)), { initialMs: 1, maxMs: 1, retryable: (e) => !/final/.test(String(e)) });
    await expect(final).rejects.toThrow('final 1');
  });

  it('stops waiting when its signal aborts, with the signal’s reason', async () => {
    const stop = new AbortController();
    const pending = retry(async () => Promise.reject(new Error('down')), { initialMs: 60_000, maxMs: 60_000, signal: stop.signal, onRetry: () => stop.abort(new Error('shutting down')) });
    await expect(pending).rejects.toThrow('shutting down');
  });
});
