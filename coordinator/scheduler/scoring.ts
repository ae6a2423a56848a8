import type { NodeView } from './feasibility.ts';

// Among the nodes a job fits: the cheapest first, then the tightest fit (fewest GPUs, then least
// memory, then least CPU left over), then the least recently used node.

export interface Candidate {
  node: NodeView;
  priceMilliMicros: number;
  leftoverGpus: number;
  leftoverMemoryMb: number;
  leftoverCpuMillis: number;
  lastPlacedAtMs: number;
}

export function candidate(node: NodeView, priceMilliMicros: number, gpus: number, cpuMillis: number, memoryMb: number): Candidate {
  return {
    node,
    priceMilliMicros,
    leftoverGpus: node.freeGpus.length - gpus,
    leftoverMemoryMb: node.freeMemoryMb - memoryMb,
    leftoverCpuMillis: node.freeCpuMillis - cpuMillis,
    lastPlacedAtMs: node.lastPlacedAtMs,
  };
}

/** Negative when a is the better node for the job, positive when b is, 0 when they tie. */
export function compareCandidates(a: Candidate, b: Candidate): number {
  return (
    a.priceMilliMicros - b.priceMilliMicros ||
    a.leftoverGpus - b.leftoverGpus ||
    a.leftoverMemoryMb - b.leftoverMemoryMb ||
    a.leftoverCpuMillis - b.leftoverCpuMillis ||
    a.lastPlacedAtMs - b.lastPlacedAtMs ||
    (a.node.id < b.node.id ? -1 : a.node.id > b.node.id ? 1 : 0)
  );
}
