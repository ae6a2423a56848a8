/**
 * The coordinator's clock as this agent sees it: the one estimate of how far the coordinator's
 * clock is from ours, taken from the `Date` header of its answers. Lease expiries are the
 * coordinator's times; this turns them into local deadlines, and judges lease tokens' `exp`.
 *
 * A `Date` header has whole seconds: the coordinator's time when it answered lay in [D, D + 1 s),
 * and our time then lay between sending and receiving. Each answer so bounds the offset
 * (coordinator minus local) from both sides; the recent bounds together narrow it to about the
 * shortest round trip, and the estimate is the middle. A long-poll answer alone bounds it only
 * loosely from above (the poll waited), but it was written as it left: then the estimate is at
 * most a second above the lower bound, which errs towards ending leases early, never late. A
 * clock step (bounds that no longer overlap) starts the estimate again from the newest answer.
 */
export class CoordinatorClock {
  private samples: { low: number; high: number }[] = [];

  constructor(
    private readonly now: () => number = Date.now,
    /** How many recent answers the estimate is made of. */
    private readonly window = 16,
  ) {}

  /** One answer's `Date` header, with the local times its request left and its answer came. */
  observe(dateHeader: string | null | undefined, sentAtMs: number, receivedAtMs: number): void {
    const d = dateHeader ? Date.parse(dateHeader) : NaN;
    if (!Number.isFinite(d)) return;
    this.samples.push({ low: d - receivedAtMs, high: d + 1000 - sentAtMs });
    if (this.samples.length > this.window) this.samples.shift();
    const { low, high } = this.bounds();
    if (low > high) this.samples = this.samples.slice(-1);
  }

  private bounds(): { low: number; high: number } {
    let low = -Infinity;
    let high = Infinity;
    for (const s of this.samples) {
      low = Math.max(low, s.low);
      high = Math.min(high, s.high);
    }
    return { low, high };
  }

  /** Coordinator time minus local time (ms); 0 before any answer carried a date. */
  get offsetMs(): number {
    if (!this.samples.length) return 0;
    const { low, high } = this.bounds();
    return Math.round(Math.min((low + high) / 2, low + 1000));
  }

  /** The coordinator's time now, as best known here. */
  coordinatorNow(): number {
    return this.now() + this.offsetMs;
  }

  /** The local time at which the coordinator's clock shows `coordinatorMs`. */
  toLocal(coordinatorMs: number): number {
    return coordinatorMs - this.offsetMs;
  }
}
