import { describe, expect, it } from 'vitest';
import { CoordinatorClock } from '../../../provider-agent/coordinator-clock.ts';

/** The Date header a coordinator whose clock reads `ms` sends: whole seconds. */
const dateHeader = (ms: number) => new Date(ms).toUTCString();

describe('CoordinatorClock: the coordinator clock from the Date header of its answers', () => {
  it('knows nothing before an answer: no correction', () => {
    const clock = new CoordinatorClock(() => 1_000_000);
    expect(clock.offsetMs).toBe(0);
    expect(clock.toLocal(1_005_000)).toBe(1_005_000);
  });

  it('narrows a coordinator 42.3 s ahead to within the round trip from answers at several sub-second phases', () => {
    const offset = 42_300;
    const clock = new CoordinatorClock();
    let local = 1_700_000_000_000;
    for (let i = 0; i < 12; i++) {
      local += 1_337; // answers land at different points within the coordinator's second
      const sent = local;
      const received = local + 20;
      clock.observe(dateHeader(sent + 10 + offset), sent, received);
    }
    expect(Math.abs(clock.offsetMs - offset)).toBeLessThanOrEqual(30);
    // A lease ending at the coordinator's 12:00:00 ends here 42.3 s earlier by the local clock.
    expect(Math.abs(clock.toLocal(1_800_000_000_000) - (1_800_000_000_000 - offset))).toBeLessThanOrEqual(30);
  });

  it('reads the end of a long-poll answer by when it came, not when the poll left', () => {
    const clock = new CoordinatorClock();
    const sent = 1_700_000_000_000;
    const received = sent + 29_500; // the poll waited 29.5 s, the coordinator's clock agrees with ours
    clock.observe(dateHeader(received - 5), sent, received);
    // Never behind the coordinator's clock (a lease never ends later here), at most a second ahead.
    expect(clock.offsetMs).toBeGreaterThanOrEqual(-10);
    expect(clock.offsetMs).toBeLessThanOrEqual(1000);
    // A heartbeat's quick answer then pins it.
    clock.observe(dateHeader(received + 1_000), received + 990, received + 1_010);
    clock.observe(dateHeader(received + 1_500), received + 1_490, received + 1_510);
    expect(Math.abs(clock.offsetMs)).toBeLessThanOrEqual(600);
  });

  it('starts again from the newest answer after the local clock steps', () => {
    const clock = new CoordinatorClock();
    const t = 1_700_000_000_000;
    for (let i = 0; i < 5; i++) clock.observe(dateHeader(t + i * 1000), t + i * 1000 - 5, t + i * 1000 + 5);
    expect(Math.abs(clock.offsetMs)).toBeLessThanOrEqual(600);
    // The local clock jumps back an hour (NTP): the coordinator now reads 3,600 s ahead.
    clock.observe(dateHeader(t + 10_000), t + 10_000 - 3_600_000 - 5, t + 10_000 - 3_600_000 + 5);
    expect(Math.abs(clock.offsetMs - 3_600_000)).toBeLessThanOrEqual(1000);
  });

  it('ignores an answer without a usable Date header', () => {
    const clock = new CoordinatorClock();
    clock.observe(null, 0, 10);
    clock.observe('not a date', 0, 10);
    expect(clock.offsetMs).toBe(0);
  });
});
