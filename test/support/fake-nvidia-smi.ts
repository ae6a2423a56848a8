// A fake `nvidia-smi` on a temp PATH, serving a real captured fixture: `-q -x` prints the
// XML file as it is; `-L` and `--query-gpu` answer from the values in that same file (or a
// given CSV, printed as captured). It can also fail the way a broken driver does, print a
// warning beside good output, or hang. The tests run the real node-nvidia-smi against it.
import { chmod, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

// xml2js ships no types; this is the one call the fake needs (node-nvidia-smi's options).
const xml2js = createRequire(import.meta.url)('xml2js') as {
  parseStringPromise(xml: string, opts: { explicitArray: boolean; trim: boolean }): Promise<unknown>;
};

export const fixturesDir = fileURLToPath(new URL('../fixtures/nvidia-smi/', import.meta.url));

export function fixturePath(name: string): string {
  return path.join(fixturesDir, name);
}

export async function readFixture(name: string): Promise<string> {
  return readFile(fixturePath(name), 'utf8');
}

/**
 * One section of a capture-*.txt file: the lines between the `#`-banner that holds `title`
 * and the next banner, trimmed of blank lines at either end.
 */
export async function captureSection(name: string, title: string): Promise<string> {
  const lines = (await readFixture(name)).split('\n');
  const at = lines.findIndex((l) => l.startsWith('# ') && l.includes(title));
  if (at < 0) throw new Error(`${name} has no section "${title}"`);
  let start = at;
  while (start < lines.length && !/^#{20,}$/.test(lines[start]!)) start++;
  let end = start + 1;
  while (end < lines.length && !/^#{20,}$/.test(lines[end]!)) end++;
  return lines
    .slice(start + 1, end)
    .join('\n')
    .trim();
}

export interface FakeNvidiaSmiOptions {
  /** Fixture served for `-q -x`, and the source of `-L` and `--query-gpu` answers. */
  xml?: string;
  /** Fixture printed as it is for any `--query-gpu`, instead of answers made from `xml`. */
  csv?: string;
  /** Every call prints this fixture's text on stdout and exits with `exitCode`. */
  fail?: { fixture: string; exitCode: number };
  /** Printed on stderr beside good output (exit 0). */
  stderrWarning?: string;
  /** Printed on stdout before good output (exit 0). */
  stdoutWarning?: string;
  /** Every call hangs (and writes its pid to the pids file). */
  hang?: boolean;
  /** Bytes of trailing newlines after the XML, to pass node-nvidia-smi's 1 MiB exec limit. */
  padXmlBytes?: number;
}

export interface FakeNvidiaSmi {
  dir: string;
  /** The PATH to detect with: only the fake's dir. */
  path: string;
  /** The argument lists of every call so far, in order. */
  calls(): Promise<string[][]>;
  /** Pids of hung calls that are still alive. */
  livePids(): Promise<number[]>;
  cleanup(): Promise<void>;
}

interface QueryAnswer {
  /** Per GPU, per query field: the value as nvidia-smi prints it in CSV with units. */
  rows: Record<string, string>[];
  list: string;
}

type Xml = string | { [k: string]: Xml } | Xml[];

function pick(v: Xml | undefined, ...names: string[]): string | undefined {
  let cur = v;
  for (const n of names) cur = cur && typeof cur === 'object' && !Array.isArray(cur) ? cur[n] : undefined;
  return typeof cur === 'string' && cur.trim() !== '' ? cur.trim() : undefined;
}

const csvNa = (v: string | undefined) => (v === undefined || v === 'N/A' ? '[N/A]' : v);

/** Parsed as node-nvidia-smi parses `nvidia-smi -q -x`. */
export async function parseFixtureXml(name: string): Promise<unknown> {
  return xml2js.parseStringPromise(await readFixture(name), { explicitArray: false, trim: true });
}

/**
 * What `-L` and `--query-gpu` would print for the values in an XML fixture; null where the
 * file is not XML (a broken nvidia-smi then prints the same text for every command).
 */
async function answersFrom(xmlText: string): Promise<QueryAnswer | null> {
  let parsed: { nvidia_smi_log?: Xml };
  try {
    parsed = (await xml2js.parseStringPromise(xmlText, { explicitArray: false, trim: true })) as typeof parsed;
  } catch {
    return null;
  }
  const log = (parsed.nvidia_smi_log ?? {}) as Record<string, Xml>;
  const gpus = log['gpu'] === undefined ? [] : Array.isArray(log['gpu']) ? log['gpu'] : [log['gpu']];
  // A driver whose XML has no <mig_mode> predates MIG and refuses mig.mode.current as a query field.
  const knowsMig = gpus.some((g) => typeof g === 'object' && !Array.isArray(g) && 'mig_mode' in g);
  const rows = gpus.map((gpu, index) => {
    const row: Record<string, string> = {
      index: String(index),
      uuid: csvNa(pick(gpu, 'uuid')),
      name: csvNa(pick(gpu, 'product_name')),
      'memory.total': csvNa(pick(gpu, 'fb_memory_usage', 'total')),
      'memory.used': csvNa(pick(gpu, 'fb_memory_usage', 'used')),
      'utilization.gpu': csvNa(pick(gpu, 'utilization', 'gpu_util')),
      // The CSV prints temperature without its " C".
      'temperature.gpu': csvNa(pick(gpu, 'temperature', 'gpu_temp')?.replace(/ C$/, '')),
      'power.draw': csvNa(
        pick(gpu, 'power_readings', 'power_draw') ??
          pick(gpu, 'gpu_power_readings', 'power_draw') ??
          pick(gpu, 'gpu_power_readings', 'average_power_draw'),
      ),
      driver_version: csvNa(pick(log, 'driver_version')),
      'pci.bus_id': csvNa(pick(gpu, 'pci', 'pci_bus_id')),
    };
    if (knowsMig) row['mig.mode.current'] = csvNa(pick(gpu, 'mig_mode', 'current_mig'));
    return row;
  });
  const list = rows.map((r) => `GPU ${r['index']}: ${r['name']} (UUID: ${r['uuid']})\n`).join('');
  return { rows, list };
}

// The fake itself: a CommonJS script run by this same node binary.
const script = String.raw`
const fs = require('fs');
const path = require('path');
const dir = __dirname;
const cfg = JSON.parse(fs.readFileSync(path.join(dir, 'config.json'), 'utf8'));
const args = process.argv.slice(2);
fs.appendFileSync(path.join(dir, 'calls.log'), JSON.stringify(args) + '\n');
const units = { 'memory.total': 'MiB', 'memory.used': 'MiB', 'utilization.gpu': '%', 'power.draw': 'W' };

function main() {
  if (cfg.hang) {
    fs.appendFileSync(path.join(dir, 'pids'), process.pid + '\n');
    setInterval(() => {}, 1 << 30);
    return;
  }
  if (cfg.fail) {
    process.stdout.write(cfg.fail.text);
    process.exitCode = cfg.fail.exitCode;
    return;
  }
  let out = cfg.stdoutWarning ? cfg.stdoutWarning + '\n' : '';
  if (cfg.stderrWarning) process.stderr.write(cfg.stderrWarning + '\n');
  const query = args.find((a) => a.startsWith('--query-gpu='));
  if (args.includes('-q') && args.includes('-x')) {
    out += fs.readFileSync(cfg.xml, 'utf8') + '\n'.repeat(cfg.padXmlBytes || 0);
  } else if (!cfg.answers) {
    out += fs.readFileSync(cfg.xml, 'utf8');
  } else if (args[0] === '-L') {
    out += cfg.answers.list;
  } else if (query && cfg.csv) {
    out += fs.readFileSync(cfg.csv, 'utf8');
  } else if (query) {
    const fields = query.slice('--query-gpu='.length).split(',');
    const format = (args.find((a) => a.startsWith('--format=')) || '--format=csv').slice('--format='.length).split(',');
    const unknown = fields.find((f) => !cfg.fields.includes(f));
    if (unknown) {
      process.stdout.write('Field "' + unknown + '" is not a valid field to query.\n\n');
      process.exitCode = 2;
      return;
    }
    const noUnits = format.includes('nounits');
    if (!format.includes('noheader')) out += fields.map((f) => (units[f] ? f + ' [' + units[f] + ']' : f)).join(', ') + '\n';
    for (const row of cfg.answers.rows) {
      out += fields.map((f) => (noUnits ? row[f].replace(/ (MiB|W|%)$/, '') : row[f])).join(', ') + '\n';
    }
  } else {
    process.stdout.write('fake nvidia-smi: unsupported arguments ' + args.join(' ') + '\n');
    process.exitCode = 1;
    return;
  }
  process.stdout.write(out);
}
main();
`;

export async function createFakeNvidiaSmi(opts: FakeNvidiaSmiOptions): Promise<FakeNvidiaSmi> {
  const dir = await mkdtemp(path.join(tmpdir(), 'fake-nvidia-smi-'));
  const xml = opts.xml === undefined ? undefined : fixturePath(opts.xml);
  const answers = xml === undefined ? { rows: [], list: '' } : await answersFrom(await readFile(xml, 'utf8'));
  const config = {
    xml,
    csv: opts.csv === undefined ? undefined : fixturePath(opts.csv),
    answers,
    fields: Object.keys(answers?.rows[0] ?? {}),
    fail: opts.fail && { text: await readFixture(opts.fail.fixture), exitCode: opts.fail.exitCode },
    stderrWarning: opts.stderrWarning,
    stdoutWarning: opts.stdoutWarning,
    hang: opts.hang ?? false,
    padXmlBytes: opts.padXmlBytes ?? 0,
  };
  await writeFile(path.join(dir, 'config.json'), JSON.stringify(config));
  const bin = path.join(dir, 'nvidia-smi');
  await writeFile(bin, `#!${process.execPath}\n${script}`);
  await chmod(bin, 0o755);

  const pidsFile = path.join(dir, 'pids');
  // Alive and not a zombie: a killed fake waits as a zombie until init reaps it, which here can take a second.
  const alive = async (pid: number) => {
    try {
      process.kill(pid, 0);
    } catch {
      return false;
    }
    const stat = await readFile(`/proc/${pid}/stat`, 'utf8').catch(() => null);
    return stat === null ? process.platform !== 'linux' : stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z';
  };
  const recordedPids = async () =>
    (await readFile(pidsFile, 'utf8').catch(() => ''))
      .split('\n')
      .filter((l) => l !== '')
      .map(Number);

  return {
    dir,
    path: dir,
    async calls() {
      const log = await readFile(path.join(dir, 'calls.log'), 'utf8').catch(() => '');
      return log
        .split('\n')
        .filter((l) => l !== '')
        .map((l) => JSON.parse(l) as string[]);
    },
    async livePids() {
      const pids = await recordedPids();
      const live = await Promise.all(pids.map(alive));
      return pids.filter((_, i) => live[i]);
    },
    async cleanup() {
      for (const pid of await recordedPids()) {
        if (await alive(pid)) process.kill(pid, 'SIGKILL');
      }
      await rm(dir, { recursive: true, force: true });
    },
  };
}

/** For a manual run: `npx tsx test/support/fake-nvidia-smi.ts rtx-a5000-x2-v13.xml` prints a PATH to use. */
if (process.argv[1] !== undefined && fileURLToPath(import.meta.url) === path.resolve(process.argv[1])) {
  const fixture = process.argv[2] ?? 'rtx-a5000-x2-v13.xml';
  const fake = await createFakeNvidiaSmi({ xml: fixture });
  process.stdout.write(`${fake.path}\n`);
}
