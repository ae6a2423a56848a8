// The longest stretches a process's main thread ran without going idle, from a `--cpu-prof`
// profile: what held the event loop (and every request queued behind it), and which of our
// functions ran in each. A p99 is made of these. With BENCH_MARKS=1, log-followers.bench.ts
// prints each measured window in the profile's clock.
//
//   npx tsx test/bench/long-tasks.ts DIR/CPU.….cpuprofile [FROM_US TO_US] [COUNT]
import { readFileSync } from 'node:fs';

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  children?: number[];
}
interface Profile {
  nodes: ProfileNode[];
  startTime: number;
  samples: number[];
  timeDeltas: number[];
}

const [file, from = '-Infinity', to = 'Infinity', count = '15'] = process.argv.slice(2);
if (!file) {
  console.error('usage: npx tsx test/bench/long-tasks.ts PROFILE [FROM_US TO_US] [COUNT]');
  process.exit(2);
}
const profile = JSON.parse(readFileSync(file, 'utf8')) as Profile;
const byId = new Map(profile.nodes.map((n) => [n.id, n]));
const parent = new Map<number, number>();
for (const n of profile.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
const label = (n: ProfileNode) => `${n.callFrame.functionName || '(anonymous)'} ${n.callFrame.url.replace(/.*node_modules\//, '').replace(/^.*?\/(coordinator|shared)\//, '$1/')}`;

/** The outermost and innermost of our frames in a sample's stack, else its leaf. */
function what(id: number): string {
  const ours: ProfileNode[] = [];
  let leaf: ProfileNode | undefined;
  for (let i: number | undefined = id; i !== undefined; i = parent.get(i)) {
    const n = byId.get(i)!;
    leaf ??= n;
    if (/\/(coordinator|shared)\//.test(n.callFrame.url)) ours.push(n);
  }
  return ours.length ? `${label(ours[ours.length - 1]!)} > ${label(ours[0]!)}` : label(leaf!);
}

interface Run {
  start: number;
  end: number;
  what: Map<string, number>;
}
const runs: Run[] = [];
let current: Run | null = null;
let t = profile.startTime;
for (let i = 0; i < profile.samples.length; i++) {
  t += profile.timeDeltas[i]!;
  if (t < Number(from) || t > Number(to)) continue;
  const n = byId.get(profile.samples[i]!)!;
  if (n.callFrame.functionName === '(idle)') {
    if (current) runs.push(current);
    current = null;
    continue;
  }
  current ??= { start: t, end: t, what: new Map() };
  current.end = t;
  const k = what(n.id);
  current.what.set(k, (current.what.get(k) ?? 0) + 1);
}
if (current) runs.push(current);
runs.sort((a, b) => b.end - b.start - (a.end - a.start));
const over = (ms: number) => runs.filter((r) => r.end - r.start > ms * 1000).length;
const busy = runs.reduce((s, r) => s + r.end - r.start, 0);
console.log(`${runs.length} busy stretches, ${(busy / 1e6).toFixed(2)} s in all; over 10 ms: ${over(10)}, over 20 ms: ${over(20)}, over 50 ms: ${over(50)}`);
const origin = Number.isFinite(Number(from)) ? Number(from) : profile.startTime;
for (const r of runs.slice(0, Number(count))) {
  const top = [...r.what].sort((a, b) => b[1] - a[1]).slice(0, 3);
  console.log(`${((r.end - r.start) / 1000).toFixed(1)} ms at +${((r.start - origin) / 1e6).toFixed(2)} s: ${top.map(([k, v]) => `${v}× ${k}`).join(' | ')}`);
}
