// `npm run bench`: runs every test/bench/*.bench.ts in turn, each as its own process, passing
// its output through; fails when one fails. `npm run bench -- submit` runs only those whose
// file name contains "submit".
import { spawn } from 'node:child_process';
import { readdirSync } from 'node:fs';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const root = join(here, '..', '..');
const filters = process.argv.slice(2);
const benches = readdirSync(here)
  .filter((f) => f.endsWith('.bench.ts'))
  .filter((f) => !filters.length || filters.some((w) => f.includes(w)))
  .sort();

if (!benches.length) {
  process.stderr.write(`bench: no test/bench/*.bench.ts${filters.length ? ` matching ${filters.join(', ')}` : ''}\n`);
  process.exit(1);
}

function run(file: string): Promise<number> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, ['--import', 'tsx', join(here, file)], { cwd: root, stdio: 'inherit' });
    child.on('error', () => resolve(1));
    child.on('exit', (code, signal) => resolve(code ?? (signal ? 1 : 0)));
  });
}

const failed: string[] = [];
for (const file of benches) {
  process.stdout.write(`# ${relative(root, join(here, file))}\n`);
  const started = performance.now();
  const code = await run(file);
  process.stdout.write(`# ${file}: ${code === 0 ? 'done' : `failed (exit ${code})`} in ${((performance.now() - started) / 1000).toFixed(1)} s\n`);
  if (code !== 0) failed.push(file);
}
if (failed.length) {
  process.stderr.write(`bench: ${failed.length} of ${benches.length} failed: ${failed.join(', ')}\n`);
  process.exit(1);
}
