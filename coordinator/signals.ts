// In-process wake-ups between parts of one coordinator (the scheduler, long-polls).
// Across replicas the same news travels through PostgreSQL NOTIFY.
type Listener = (payload?: string) => void;

export class Signals {
  private listeners = new Map<string, Set<Listener>>();

  on(topic: string, fn: Listener): () => void {
    let set = this.listeners.get(topic);
    if (!set) this.listeners.set(topic, (set = new Set()));
    set.add(fn);
    return () => set.delete(fn);
  }

  emit(topic: string, payload?: string): void {
    for (const fn of this.listeners.get(topic) ?? []) fn(payload);
  }
}

export const topics = {
  /** A job was queued or capacity was freed: the scheduler should run a pass. */
  schedule: 'schedule',
  /**
   * A node joined, came back, changed what it offers or had capacity freed (the payload is its id;
   * none: every node): the scheduler reads it again before its next pass, and runs one.
   */
  nodeChanged: 'node-changed',
} as const;
