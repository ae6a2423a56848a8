import type { Database } from '../db/open.ts';
import type { Signals } from '../signals.ts';
import { leaseChannel } from '../scheduler/placement.ts';

/** In-process topic: a lease was issued; the payload is the node id. */
export const leaseTopic = 'lease';

/**
 * Wakes a node's waiting long-poll (GET /v1/agent/work) when a lease is issued for it: in
 * process through Signals, and from the scheduler on another replica through LISTEN/NOTIFY.
 */
export class LeaseNotifier {
  private waiters = new Map<string, Set<() => void>>();
  private offs: (() => void | Promise<void>)[] = [];

  constructor(
    private signals: Signals,
    private database: Database,
  ) {}

  async start(): Promise<void> {
    this.offs.push(this.signals.on(leaseTopic, (nodeId) => nodeId && this.wakeNode(nodeId)));
    if (this.database.driver === 'postgres') {
      this.offs.push(await this.database.listen(leaseChannel, (payload) => payload.split(',').forEach((id) => this.wakeNode(id))));
    }
  }

  /** Tells this replica's waiting long-polls (the scheduler's NOTIFY tells the others). */
  leased(nodeIds: string[]): void {
    for (const id of nodeIds) this.signals.emit(leaseTopic, id);
  }

  /**
   * Registers a wait for the node before the caller looks at the database, so that a lease
   * issued in between is not missed. until() resolves true on news; false at the deadline or on
   * abort, still registered (the caller may wait on), until cancel().
   */
  waiter(nodeId: string): { until(deadlineMs: number, signal?: AbortSignal): Promise<boolean>; cancel(): void } {
    let set = this.waiters.get(nodeId);
    if (!set) this.waiters.set(nodeId, (set = new Set()));
    let woken = false;
    let resolve: ((news: boolean) => void) | null = null;
    const fn = () => {
      woken = true;
      resolve?.(true);
    };
    set.add(fn);
    const cancel = () => {
      set.delete(fn);
      if (!set.size && this.waiters.get(nodeId) === set) this.waiters.delete(nodeId);
    };
    return {
      cancel,
      until: (deadlineMs, signal) =>
        new Promise<boolean>((res) => {
          const done = (news: boolean) => {
            clearTimeout(timer);
            signal?.removeEventListener('abort', onAbort);
            resolve = null;
            if (news) cancel();
            res(news);
          };
          const onAbort = () => done(false);
          resolve = done;
          const timer = setTimeout(() => done(false), Math.max(0, deadlineMs - Date.now()));
          signal?.addEventListener('abort', onAbort, { once: true });
          if (woken) done(true);
          else if (signal?.aborted) done(false);
        }),
    };
  }

  get waiting(): number {
    let n = 0;
    for (const s of this.waiters.values()) n += s.size;
    return n;
  }

  async stop(): Promise<void> {
    for (const off of this.offs.splice(0)) await off();
    for (const set of this.waiters.values()) for (const fn of [...set]) fn();
  }

  private wakeNode(nodeId: string) {
    const set = this.waiters.get(nodeId);
    if (set) for (const fn of [...set]) fn();
  }
}
