// Time and memory of normalizeNvidiaSmi on the largest XML fixture, parsed once the way
// node-nvidia-smi parses it. Prints `name: value unit` lines.
//
//   npx tsx test/bench/normalize.bench.ts
import { readdir, stat } from 'node:fs/promises';
import path from 'node:path';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { type NvidiaSmiResult, normalizeNvidiaSmi } from '../../provider-agent/hardware/nvidia.ts';
import { fixturesDir, parseFixtureXml } from '../support/fake-nvidia-smi.ts';

const iterations = Number(process.env['BENCH_ITERATIONS'] ?? 1000);

// A gc() of our own, so heap figures are not other garbage.
setFlagsFromString('--expose-gc');
const gc = runInNewContext('gc') as () => void;

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
}

const xmlFiles = (await readdir(fixturesDir)).filter((f) => f.endsWith('.xml'));
const sized = await Promise.all(xmlFiles.map(async (f) => ({ f, size: (await stat(path.join(fixturesDir, f))).size })));
const largest = sized.sort((a, b) => b.size - a.size)[0]!;
console.log(`# largest XML fixture: ${largest.f} (${largest.size} bytes)`);

const parseStarted = performance.now();
const result = (await parseFixtureXml(largest.f)) as NvidiaSmiResult;
console.log(`parse_largest_fixture_xml_ms: ${(performance.now() - parseStarted).toFixed(2)} ms`);

for (let i = 0; i < 100; i++) normalizeNvidiaSmi(result); // warm up the JIT

const times: number[] = [];
for (let i = 0; i < iterations; i++) {
  const t0 = performance.now();
  normalizeNvidiaSmi(result);
  times.push(performance.now() - t0);
}

// Heap taken by one normalization: what is allocated between two points with a gc before.
const heaps: number[] = [];
for (let i = 0; i < 50; i++) {
  gc();
  const before = process.memoryUsage().heapUsed;
  const kept = normalizeNvidiaSmi(result);
  heaps.push(process.memoryUsage().heapUsed - before);
  if (kept.gpus.length === 0) throw new Error(`${largest.f} normalized to no GPUs`);
}

console.log(`normalize_largest_fixture_ms: ${median(times).toFixed(4)} ms`);
console.log(`normalize_largest_fixture_heap_mb: ${(median(heaps) / 2 ** 20).toFixed(4)} MB`);
