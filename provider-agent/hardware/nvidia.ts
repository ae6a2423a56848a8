// NVIDIA GPUs: the inventory from node-nvidia-smi (`nvidia-smi -q -x`), MIG UUIDs from
// `nvidia-smi -L`, live figures from one `--query-gpu` CSV call. node-nvidia-smi has no
// timeout, hides the driver's message, drops good data when anything reaches stderr and
// caps output at 1 MiB (PITFALLS.md); each of those is contained here, and whatever goes
// wrong ends as a warning, never as a thrown error.
import { execFile, type ExecFileException } from 'node:child_process';
import { access, constants, readdir, readFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import path from 'node:path';
import nvidiaSmi from 'node-nvidia-smi';
import { GpuDevice, GpuMetrics, maxGpuMemoryMb, maxGpusPerNode, maxWarningLength } from '../../shared/hardware.ts';

type XmlValue = nvidiaSmi.XmlValue;
type XmlElement = nvidiaSmi.XmlElement;
export type NvidiaSmiResult = nvidiaSmi.Result;

export interface NvidiaInventory {
  gpus: GpuDevice[];
  warnings: string[];
}

/** A MIG device's UUID as `nvidia-smi -L` prints it, by its parent and its `Device N`. */
export interface MigUuid {
  parentUuid: string;
  migIndex: number;
  uuid: string;
}

export interface NvidiaSmiOptions {
  /** The PATH to look for nvidia-smi on (default: this process's). */
  path?: string;
  /** The limit for each nvidia-smi call, in ms. */
  timeoutMs?: number;
}

export const defaultDetectTimeoutMs = 15_000;
export const defaultQueryTimeoutMs = 5_000;

/** The one `--query-gpu` field list: the metrics of every heartbeat, and the inventory when -q -x fails. */
export const queryGpuFields = [
  'index',
  'uuid',
  'name',
  'memory.total',
  'memory.used',
  'utilization.gpu',
  'temperature.gpu',
  'power.draw',
  'driver_version',
  'pci.bus_id',
  'mig.mode.current',
] as const;
// An old driver refuses the whole query over one field it does not know; these it cannot lack.
const requiredQueryFields = new Set(['index', 'uuid']);

export const cpuOnlyWarning = 'nvidia-smi not found on PATH: this is a CPU-only node';

// ---------------------------------------------------------------------------------------------
// Values as nvidia-smi prints them

// Placeholders nvidia-smi prints instead of a value; in CSV they come in brackets ("[N/A]").
const notAvailable =
  /^(N\/A|Not Found|Not Supported|Unknown Error|Insufficient Permissions|None|Requested functionality has been deprecated)$/i;

/** A printed value, or null where nvidia-smi printed a placeholder or nothing. */
function present(raw: string): string | null {
  const t = raw.trim();
  if (t === '' || (t.startsWith('[') && t.endsWith(']')) || notAvailable.test(t)) return null;
  return t;
}

function isElement(v: unknown): v is XmlElement {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function child(v: XmlValue | undefined, ...names: string[]): XmlValue | undefined {
  let cur = v;
  for (const name of names) cur = isElement(cur) ? (cur[name] as XmlValue | undefined) : undefined;
  return cur;
}

/** The elements of a value that is one object for one element and an array for several. */
function elements(v: XmlValue | undefined): XmlElement[] {
  if (Array.isArray(v)) return v.filter(isElement);
  return isElement(v) ? [v] : [];
}

function xmlText(v: XmlValue | undefined): string | null {
  const one = Array.isArray(v) ? v[0] : v;
  // xml2js puts an element's text under `_` when the element also has attributes.
  const raw = isElement(one) ? one['_'] : one;
  return typeof raw === 'string' ? present(raw) : null;
}

function integer(text: string | null | undefined): number | null {
  return text != null && /^\d+$/.test(text) ? Number(text) : null;
}

/** "24576 MiB" (or a bare "24576", as CSV prints with nounits) → 24576. */
function mebibytes(text: string | null | undefined): number | null {
  const m = text == null ? null : /^(\d+)(?:\s*MiB)?$/.exec(text);
  return m ? Number(m[1]) : null;
}

/** "250.00 W", "41 C", "0 %" → the number; null for anything else. */
function quantity(text: string | null | undefined): number | null {
  const m = text == null ? null : /^(-?\d+(?:\.\d+)?)(?:\s*[A-Za-z%]+)?$/.exec(text);
  return m ? Number(m[1]) : null;
}

function cudaVersionOf(text: string | null): string | null {
  return text !== null && /^\d{1,3}\.\d{1,3}$/.test(text) ? text : null;
}

function clip(text: string, max = 600): string {
  const oneLine = text.replace(/\s+/g, ' ').trim();
  return oneLine.length <= max ? oneLine : `${oneLine.slice(0, max - 1)}…`;
}

// ---------------------------------------------------------------------------------------------
// Normalization: pure functions from what nvidia-smi printed to the shared capacity schema

/**
 * Whole GPUs that report one UUID (cloned VMs, masked reports) are two GPUs all the same: each is
 * named `<uuid>/<PCI bus id>` instead, and leased by index (nvidiaDeviceId), where their bus ids
 * tell them apart. Without that, the later ones are dropped by admit().
 */
function separateSharedUuids(candidates: unknown[], warnings: string[]): unknown[] {
  const byUuid = new Map<string, Record<string, unknown>[]>();
  for (const c of candidates) {
    if (!isElement(c) || c['mig'] !== null || typeof c['uuid'] !== 'string' || c['id'] !== c['uuid']) continue;
    const group = byUuid.get(c['uuid']) ?? [];
    group.push(c);
    byUuid.set(c['uuid'], group);
  }
  const renamed = new Map<unknown, Record<string, unknown>>();
  for (const [uuid, group] of byUuid) {
    if (group.length < 2) continue;
    const busIds = group.map((g) => g['pciBusId']);
    const indexes = group.map((g) => g['index']).join(', ');
    // Nothing tells them apart: admit() keeps the first and says so.
    if (busIds.some((b) => typeof b !== 'string') || new Set(busIds).size !== group.length) continue;
    warnings.push(clip(`GPUs ${indexes} report the same UUID ${uuid}: advertised as ${group.length}, told apart by PCI bus id (${busIds.join(', ')}) and leased by index`));
    for (const g of group) renamed.set(g, { ...g, id: `${uuid}/${g['pciBusId'] as string}` });
  }
  return renamed.size ? candidates.map((c) => renamed.get(c) ?? c) : candidates;
}

/** Keeps the candidates the shared schema accepts, drops duplicates, caps the count; says why for each one dropped. */
function admit(found: unknown[], warnings: string[]): GpuDevice[] {
  const candidates = separateSharedUuids(found, warnings);
  const gpus: GpuDevice[] = [];
  const ids = new Set<string>();
  for (const candidate of candidates) {
    if (gpus.length === maxGpusPerNode) {
      warnings.push(`more than ${maxGpusPerNode} GPU units; the rest are not advertised`);
      break;
    }
    const parsed = GpuDevice.safeParse(candidate);
    const label = isElement(candidate) && typeof candidate['id'] === 'string' ? candidate['id'] : 'a GPU';
    if (!parsed.success) {
      const issue = parsed.error.issues[0];
      warnings.push(clip(`${label} skipped: ${issue ? `${issue.path.join('.')} ${issue.message}` : 'invalid'}`));
    } else if (ids.has(parsed.data.id)) {
      warnings.push(clip(`${label} is listed twice; advertised once`));
    } else {
      ids.add(parsed.data.id);
      gpus.push(parsed.data);
    }
  }
  return gpus;
}

/**
 * node-nvidia-smi's result → the GPUs to advertise, in nvidia-smi's order. A MIG-enabled GPU
 * is replaced by its MIG devices (none: nothing advertised); a MIG device's id is its MIG UUID
 * from `migUuids` where given, else `<parent uuid>:<gpu instance>:<compute instance>`.
 */
export function normalizeNvidiaSmi(result: NvidiaSmiResult | undefined, migUuids: readonly MigUuid[] = []): NvidiaInventory {
  const warnings: string[] = [];
  const log = result?.nvidia_smi_log;
  if (!isElement(log)) return { gpus: [], warnings: ['nvidia-smi -q -x printed no <nvidia_smi_log>: no GPUs advertised'] };

  const driverVersion = xmlText(log['driver_version']) ?? 'unknown';
  const cudaVersion = cudaVersionOf(xmlText(log['cuda_version']));
  const gpuElements = elements(log['gpu']);
  const attached = integer(xmlText(log['attached_gpus']));
  if (gpuElements.length === 0) warnings.push('nvidia-smi lists no GPUs');
  else if (attached !== null && attached !== gpuElements.length) {
    warnings.push(`nvidia-smi says ${attached} GPUs are attached but lists ${gpuElements.length}; advertising those listed`);
  }
  const migIds = new Map(migUuids.map((m) => [`${m.parentUuid}/${m.migIndex}`, m.uuid]));

  const candidates: unknown[] = [];
  gpuElements.forEach((gpu, index) => {
    const pciBusId = xmlText(child(gpu, 'pci', 'pci_bus_id')) ?? gpu.$?.['id'] ?? null;
    const uuid = xmlText(gpu['uuid']);
    if (uuid === null) {
      warnings.push(`GPU ${index} (${pciBusId ?? 'no PCI bus id'}) reports no UUID; skipped`);
      return;
    }
    const memoryMb = (v: XmlValue | undefined, what: string): number => {
      const n = mebibytes(xmlText(v));
      if (n === null) warnings.push(`${what} reports no framebuffer size; advertised as 0 MiB`);
      return n ?? 0;
    };
    const common = { index, uuid, model: xmlText(gpu['product_name']) ?? 'unknown', driverVersion, cudaVersion, pciBusId };
    if (xmlText(child(gpu, 'mig_mode', 'current_mig')) !== 'Enabled') {
      candidates.push({ id: uuid, ...common, memoryMb: memoryMb(child(gpu, 'fb_memory_usage', 'total'), uuid), mig: null });
      return;
    }
    const migDevices = elements(child(gpu, 'mig_devices', 'mig_device'));
    if (migDevices.length === 0) warnings.push(`${uuid} has MIG enabled and no MIG devices: nothing advertised for it`);
    migDevices.forEach((mig, position) => {
      const gpuInstanceId = integer(xmlText(mig['gpu_instance_id']));
      const computeInstanceId = integer(xmlText(mig['compute_instance_id']));
      const migIndex = integer(xmlText(mig['index'])) ?? position;
      if (gpuInstanceId === null || computeInstanceId === null) {
        warnings.push(`${uuid} MIG device ${migIndex} reports no GPU/compute instance id; skipped`);
        return;
      }
      const id = migIds.get(`${uuid}/${migIndex}`) ?? `${uuid}:${gpuInstanceId}:${computeInstanceId}`;
      candidates.push({
        id,
        ...common,
        memoryMb: memoryMb(child(mig, 'fb_memory_usage', 'total'), id),
        mig: { index: migIndex, gpuInstanceId, computeInstanceId },
      });
    });
  });
  return { gpus: admit(candidates, warnings), warnings };
}

export interface NvidiaSmiList {
  gpus: { index: number; model: string; uuid: string }[];
  migDevices: MigUuid[];
}

const listGpuLine = /^GPU (\d+): (.+?) \(UUID: ([^)\s]+)\)$/;
const listMigLine = /^MIG \S+\s+Device\s+(\d+): \(UUID: ([^)\s]+)\)$/;

/** `nvidia-smi -L`: "GPU 0: <name> (UUID: GPU-…)", each followed by its "  MIG <profile> Device N: (UUID: MIG-…)" lines. */
export function parseNvidiaSmiList(text: string): NvidiaSmiList {
  const list: NvidiaSmiList = { gpus: [], migDevices: [] };
  let parentUuid: string | null = null;
  for (const line of text.split(/\r?\n/).map((l) => l.trim())) {
    const gpu = listGpuLine.exec(line);
    const mig = gpu ? null : listMigLine.exec(line);
    if (gpu) {
      parentUuid = gpu[3]!;
      list.gpus.push({ index: Number(gpu[1]), model: gpu[2]!, uuid: parentUuid });
    } else if (mig && parentUuid !== null) {
      list.migDevices.push({ parentUuid, migIndex: Number(mig[1]), uuid: mig[2]! });
    }
  }
  return list;
}

export interface QueryGpuCsv {
  /** The column names: the header's (units dropped) where the output has one, else the fields asked for. */
  fields: string[];
  /** One row per GPU; values with their units stripped, null for "[N/A]" and other placeholders. */
  rows: Record<string, string | null>[];
  /** Lines that are not rows of the table (a driver warning printed beside it). */
  ignored: string[];
}

const headerCell = /^([A-Za-z_][A-Za-z0-9_.]*)(?: \[[^\]]+\])?$/;

function csvValue(cell: string): string | null {
  const value = present(cell);
  // "81559 MiB", "0 %", "69.85 W", "0 us": nvidia-smi prints units unless nounits was honoured.
  const withUnit = value === null ? null : /^(-?\d+(?:\.\d+)?) (?:[A-Za-z]+|%)$/.exec(value);
  return withUnit ? withUnit[1]! : value;
}

/**
 * Output of `nvidia-smi --query-gpu=<fields> --format=csv[,noheader][,nounits]`. Reads the
 * header where there is one (and then its names, not `fields`), strips units either way.
 */
export function parseQueryGpuCsv(text: string, fields: readonly string[] = queryGpuFields): QueryGpuCsv {
  const lines = text
    .split(/\r?\n/)
    .map((l) => l.trim())
    .filter((l) => l !== '');
  const split = (line: string) => line.split(',').map((c) => c.trim());
  const headerOf = (line: string): string[] | null => {
    const cells = split(line);
    const names = cells.map((c) => headerCell.exec(c)?.[1]);
    if (names.some((n) => n === undefined)) return null;
    // Values never look like "memory.used [MiB]"; a lone word could, unless it is what was asked for.
    return names.join() === fields.join() || cells.some((c) => /[._[]/.test(c)) ? (names as string[]) : null;
  };
  // A driver warning may come before the header: the header is the first line that is one.
  const headerAt = lines.findIndex((l) => headerOf(l) !== null);
  const names = headerAt < 0 ? [...fields] : headerOf(lines[headerAt]!)!;
  const body = headerAt < 0 ? lines : [...lines.slice(0, headerAt), ...lines.slice(headerAt + 1)];
  const csv: QueryGpuCsv = { fields: names, rows: [], ignored: [] };
  for (const line of body) {
    const cells = split(line);
    if (cells.length !== names.length) csv.ignored.push(line);
    else csv.rows.push(Object.fromEntries(names.map((n, i) => [n, csvValue(cells[i]!)])));
  }
  return csv;
}

function bounded(n: number | null, max: number): number | null {
  return n !== null && n >= 0 && n <= max ? n : null;
}

/** Per physical GPU (MIG devices share their parent's figures), keyed by UUID. */
export function metricsFromQueryGpu(csv: QueryGpuCsv): { gpus: GpuMetrics[]; warnings: string[] } {
  const gpus: GpuMetrics[] = [];
  const warnings: string[] = [];
  csv.rows.forEach((row, position) => {
    const memoryUsed = quantity(row['memory.used']);
    const parsed = GpuMetrics.safeParse({
      id: row['uuid'],
      utilizationPct: bounded(quantity(row['utilization.gpu']), 100),
      memoryUsedMb: bounded(memoryUsed === null ? null : Math.round(memoryUsed), maxGpuMemoryMb),
      temperatureC: bounded(quantity(row['temperature.gpu']), 200),
      powerW: bounded(quantity(row['power.draw']), 100_000),
    });
    if (parsed.success) gpus.push(parsed.data);
    else warnings.push(`nvidia-smi --query-gpu row ${position} has no usable uuid; skipped`);
  });
  return { gpus: gpus.slice(0, maxGpusPerNode), warnings };
}

/** The fallback inventory when -q -x fails: whole GPUs only, no CUDA version. */
export function inventoryFromQueryGpu(csv: QueryGpuCsv): NvidiaInventory {
  const warnings: string[] = [];
  const candidates: unknown[] = [];
  csv.rows.forEach((row, position) => {
    const uuid = row['uuid'] ?? null;
    if (row['mig.mode.current'] === 'Enabled') {
      warnings.push(`${uuid ?? `GPU ${position}`} has MIG enabled: its MIG devices are not listed by --query-gpu, nothing advertised for it`);
      return;
    }
    const memoryMb = mebibytes(row['memory.total']);
    if (memoryMb === null) warnings.push(`${uuid ?? `GPU ${position}`} reports no framebuffer size; advertised as 0 MiB`);
    candidates.push({
      id: uuid,
      index: integer(row['index']) ?? position,
      uuid,
      model: row['name'] ?? 'unknown',
      memoryMb: memoryMb ?? 0,
      driverVersion: row['driver_version'] ?? 'unknown',
      cudaVersion: null,
      pciBusId: row['pci.bus_id'] ?? null,
      mig: null,
    });
  });
  return { gpus: admit(candidates, warnings), warnings };
}

// ---------------------------------------------------------------------------------------------
// Running nvidia-smi

async function findOnPath(name: string, searchPath: string): Promise<string | null> {
  const names = process.platform === 'win32' ? [`${name}.exe`] : [name];
  for (const dir of searchPath.split(path.delimiter)) {
    if (dir === '') continue;
    for (const n of names) {
      const candidate = path.join(dir, n);
      try {
        await access(candidate, constants.X_OK);
        return candidate;
      } catch {
        // not here
      }
    }
  }
  return null;
}

function searchPathOf(opts: NvidiaSmiOptions): string {
  return opts.path ?? process.env['PATH'] ?? '';
}

type RunResult = { ok: true; stdout: string; stderr: string } | { ok: false; reason: string; output: string };

function describeExecFailure(what: string, err: ExecFileException, output: string, timeoutMs: number): string {
  const said = clip(output);
  if (err.code === 'ENOENT') return `${what}: nvidia-smi not found`;
  if (err.code === 'ERR_CHILD_PROCESS_STDIO_MAXBUFFER') return `${what} printed more than it may`;
  if (err.killed) return `${what} did not answer within ${timeoutMs} ms`;
  if (typeof err.code === 'number') return `${what} exited with code ${err.code}${said ? `: ${said}` : ''}`;
  if (err.signal) return `${what} was killed by ${err.signal}`;
  return `${what} failed: ${clip(err.message)}`;
}

function runNvidiaSmi(args: string[], opts: NvidiaSmiOptions, what: string): Promise<RunResult> {
  const timeoutMs = opts.timeoutMs ?? defaultQueryTimeoutMs;
  return new Promise((resolve) => {
    execFile(
      'nvidia-smi',
      args,
      {
        // spawn looks the command up on the PATH of the env it is given.
        env: opts.path === undefined ? process.env : { ...process.env, PATH: opts.path },
        timeout: timeoutMs,
        killSignal: 'SIGKILL',
        maxBuffer: 16 * 1024 * 1024,
        windowsHide: true,
        encoding: 'utf8',
      },
      (err, stdout, stderr) => {
        if (!err) resolve({ ok: true, stdout, stderr });
        else {
          const output = [stdout, stderr].filter((s) => s.trim() !== '').join('\n');
          resolve({ ok: false, reason: describeExecFailure(what, err, output, timeoutMs), output });
        }
      },
    );
  });
}

type QueryGpuOutcome = { ok: true; csv: QueryGpuCsv; stderr: string } | { ok: false; reason: string };

/** One `--query-gpu` call over queryGpuFields; a field this driver does not know is dropped and the call retried. */
export async function queryGpus(opts: NvidiaSmiOptions = {}): Promise<QueryGpuOutcome> {
  let fields: string[] = [...queryGpuFields];
  for (;;) {
    const run = await runNvidiaSmi([`--query-gpu=${fields.join(',')}`, '--format=csv,noheader,nounits'], opts, 'nvidia-smi --query-gpu');
    if (run.ok) return { ok: true, csv: parseQueryGpuCsv(run.stdout, fields), stderr: run.stderr };
    const unknown = /Field "([^"]+)" is not a valid field to query/.exec(run.output)?.[1];
    if (unknown === undefined || requiredQueryFields.has(unknown) || !fields.includes(unknown)) return run;
    fields = fields.filter((f) => f !== unknown);
  }
}

type XmlOutcome = { data: NvidiaSmiResult } | { error: Error | string };

// The XML parser node-nvidia-smi itself uses, with its options: for output it dropped over a stderr line.
const xml2js = createRequire(createRequire(import.meta.url).resolve('node-nvidia-smi'))('xml2js') as {
  parseStringPromise(xml: string, opts: { explicitArray: boolean; trim: boolean }): Promise<unknown>;
};

/**
 * node-nvidia-smi drops the XML whenever nvidia-smi wrote to stderr, though drivers print warnings
 * there (infoROM) beside complete output: run it again and read stdout ourselves. Complete XML (it
 * parses, with its <nvidia_smi_log>) is used, and what stderr said becomes a warning.
 */
async function xmlBesideStderr(said: string, opts: NvidiaSmiOptions): Promise<{ data: NvidiaSmiResult; warning: string } | null> {
  const run = await runNvidiaSmi(['-q', '-x'], opts, 'nvidia-smi -q -x');
  if (!run.ok) return null;
  try {
    const data = (await xml2js.parseStringPromise(run.stdout, { explicitArray: false, trim: true })) as NvidiaSmiResult;
    if (!isElement(data?.nvidia_smi_log)) return null;
    return { data, warning: clip(`nvidia-smi -q -x wrote to stderr: ${run.stderr.trim() || said}`, maxWarningLength) };
  } catch {
    return null;
  }
}

// One -q -x in flight per process: node-nvidia-smi's child cannot be told to stop, so a
// detection that arrives while one runs waits for that one (whatever PATH it was started
// with: the agent's does not change) instead of starting another.
let xmlInFlight: Promise<XmlOutcome> | null = null;

/** exec() reads process.env when it spawns, synchronously: the swap is over before any other code runs. */
function withPath<T>(searchPath: string | undefined, fn: () => T): T {
  if (searchPath === undefined) return fn();
  const saved = process.env['PATH'];
  process.env['PATH'] = searchPath;
  try {
    return fn();
  } finally {
    if (saved === undefined) delete process.env['PATH'];
    else process.env['PATH'] = saved;
  }
}

function queryXml(searchPath: string | undefined): Promise<XmlOutcome> {
  if (xmlInFlight) return xmlInFlight;
  const run = new Promise<XmlOutcome>((resolve) => {
    try {
      withPath(searchPath, () => nvidiaSmi((err, data) => resolve(err ? { error: err } : { data: data ?? {} })));
    } catch (e) {
      resolve({ error: e instanceof Error ? e : String(e) });
    }
  });
  xmlInFlight = run;
  void run.then(() => {
    if (xmlInFlight === run) xmlInFlight = null;
  });
  return run;
}

const timedOut = Symbol('timed out');

async function withTimeout<T>(p: Promise<T>, ms: number): Promise<T | typeof timedOut> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<typeof timedOut>((resolve) => {
    timer = setTimeout(() => resolve(timedOut), ms);
  });
  try {
    return await Promise.race([p, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * node-nvidia-smi keeps its child to itself; on Linux find it in /proc (our child running
 * `/bin/sh -c nvidia-smi -q -x`) and kill it with everything under it. Best effort: a process
 * stuck in the driver may not die, and then the in-flight detection stays the only one.
 */
async function killHungXmlQuery(): Promise<void> {
  if (process.platform !== 'linux') return;
  const parents = new Map<number, number>();
  for (const name of await readdir('/proc').catch(() => [] as string[])) {
    if (!/^\d+$/.test(name)) continue;
    const stat = await readFile(`/proc/${name}/stat`, 'utf8').catch(() => '');
    // "pid (comm) state ppid ...": comm may hold spaces and parentheses.
    const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
    if (Number.isInteger(ppid)) parents.set(Number(name), ppid);
  }
  const roots: number[] = [];
  for (const [pid, ppid] of parents) {
    if (ppid !== process.pid) continue;
    const argv = (await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '')).split('\0');
    if (argv.includes('nvidia-smi -q -x')) roots.push(pid);
  }
  const tree = [...roots];
  for (let i = 0; i < tree.length; i++) {
    for (const [pid, ppid] of parents) if (ppid === tree[i]) tree.push(pid);
  }
  for (const pid of tree) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // already gone
    }
  }
}

function describeXmlFailure(error: Error | string): string {
  if (typeof error === 'string') return `nvidia-smi -q -x wrote to stderr: ${clip(error)}`;
  const { code, signal } = error as ExecFileException;
  if (code === 'ERR_CHILD_PROCESS_STDIO_MAXBUFFER') return 'nvidia-smi -q -x printed more than node-nvidia-smi reads (1 MiB)';
  if (code === 127) return 'nvidia-smi -q -x: nvidia-smi not found';
  if (typeof code === 'number') return `nvidia-smi -q -x exited with code ${code}`;
  if (signal) return `nvidia-smi -q -x was killed by ${signal}`;
  return `nvidia-smi -q -x printed output that does not parse as XML (${clip(error.message, 200)})`;
}

/** When -q -x fails: the same GPUs from the CSV query, or its error text (the driver's own message). */
async function fallbackInventory(xmlFailure: string, opts: NvidiaSmiOptions): Promise<NvidiaInventory> {
  const query = await queryGpus(opts);
  if (!query.ok) return { gpus: [], warnings: [clip(`${xmlFailure}; ${query.reason}`, maxWarningLength)] };
  const beside = [...query.csv.ignored, query.stderr].filter((s) => s.trim() !== '').join(' ');
  const said = beside === '' ? [] : [clip(`nvidia-smi --query-gpu printed: ${beside}`)];
  if (query.csv.rows.length === 0) return { gpus: [], warnings: [`${xmlFailure}; nvidia-smi --query-gpu lists no GPUs`, ...said] };
  const inventory = inventoryFromQueryGpu(query.csv);
  return {
    gpus: inventory.gpus,
    warnings: [`${xmlFailure}; GPUs taken from nvidia-smi --query-gpu (no CUDA version, no MIG devices)`, ...said, ...inventory.warnings],
  };
}

/** MIG devices are named by their MIG UUIDs, which only `nvidia-smi -L` prints. */
async function withMigUuids(data: NvidiaSmiResult, opts: NvidiaSmiOptions): Promise<NvidiaInventory> {
  const plain = normalizeNvidiaSmi(data);
  if (!plain.gpus.some((g) => g.mig !== null)) return plain;
  const list = await runNvidiaSmi(['-L'], opts, 'nvidia-smi -L');
  if (!list.ok) return { ...plain, warnings: [...plain.warnings, `${list.reason}: MIG devices named <parent uuid>:<gi>:<ci>`] };
  return normalizeNvidiaSmi(data, parseNvidiaSmiList(list.stdout).migDevices);
}

/** The GPUs to advertise. Never throws: every failure is gpus [] (or the CSV fallback) and a warning. */
export async function detectNvidiaGpus(opts: NvidiaSmiOptions = {}): Promise<NvidiaInventory> {
  const timeoutMs = opts.timeoutMs ?? defaultDetectTimeoutMs;
  const callOpts = { ...opts, timeoutMs };
  if ((await findOnPath('nvidia-smi', searchPathOf(opts))) === null) return { gpus: [], warnings: [cpuOnlyWarning] };
  const outcome = await withTimeout(queryXml(opts.path), timeoutMs);
  if (outcome === timedOut) {
    await killHungXmlQuery();
    return { gpus: [], warnings: [`nvidia-smi -q -x did not answer within ${timeoutMs} ms: no GPUs advertised`] };
  }
  if ('data' in outcome) return withMigUuids(outcome.data, callOpts);
  if (typeof outcome.error === 'string') {
    const beside = await xmlBesideStderr(outcome.error, callOpts);
    if (beside) {
      const inventory = await withMigUuids(beside.data, callOpts);
      return { gpus: inventory.gpus, warnings: [beside.warning, ...inventory.warnings] };
    }
  }
  return fallbackInventory(describeXmlFailure(outcome.error), callOpts);
}

/** One heartbeat's GPU figures. A CPU-only node has none and says nothing. */
export async function sampleNvidiaMetrics(opts: NvidiaSmiOptions = {}): Promise<{ gpus: GpuMetrics[]; warnings: string[] }> {
  if ((await findOnPath('nvidia-smi', searchPathOf(opts))) === null) return { gpus: [], warnings: [] };
  const query = await queryGpus(opts);
  if (!query.ok) return { gpus: [], warnings: [query.reason] };
  return metricsFromQueryGpu(query.csv);
}
