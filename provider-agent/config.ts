import { parseArgs, type ParseArgsConfig } from 'node:util';
import { z } from 'zod';
import { defaultAllowedRegistries, RegistryHost } from '../shared/images.ts';
import { Labels, Price, Region } from '../shared/jobs.ts';
import { NodeName } from '../shared/nodes.ts';
import { UsageError } from './cli-args.ts';
import { defaultLogCapBytes } from './logs/shipper.ts';
import { defaultImageCacheMb } from './runtime/images.ts';
import { resolveStateDir } from './state.ts';

// The agent's settings for join, run and install-service: flags first, then GANTRY_AGENT_*
// variables, then defaults; parsed once, by one zod object per command.


type Env = Record<string, string | undefined>;

const seconds = z.coerce.number({ error: 'must be a number of seconds' }).min(0.1).max(300);

const RunSettings = z.object({
  stateDir: z.string().min(1),
  heartbeatSeconds: seconds.default(5),
  /** How often the full inventory (nvidia-smi -q -x) runs again to catch hardware changes. */
  hardwareSeconds: seconds.min(1).max(86_400).default(60),
  insecureHttp: z.boolean().default(false),
  /** Run jobs as plain processes (no Docker): runtime/process.ts, loudly unisolated. */
  unsafeProcessRuntime: z.boolean().default(false),
  /** Run nothing: the lease runner's test executor (tests only). */
  testExecutor: z.boolean().default(false),
  /** The registries jobs' images come from; given, it replaces the default list (allowedRegistriesOf). */
  allowedRegistries: z.array(RegistryHost).min(1, 'names no registry').max(64).optional(),
});
export type RunSettings = z.infer<typeof RunSettings>;

const JoinSettings = RunSettings.extend({
  coordinatorUrl: z.url({
    protocol: /^https?$/,
    error: (iss) => (iss.input === undefined ? 'is required (the URL of the coordinator)' : 'must be an http:// or https:// URL'),
  }),
  token: z.string().min(1, 'is required').max(256),
  name: NodeName.optional(),
  labels: Labels,
  region: Region.optional(),
  priceGpuHour: z.coerce.number({ error: 'must be a price per hour, like 1.25' }).pipe(Price).optional(),
  priceCpuHour: z.coerce.number({ error: 'must be a price per hour, like 0.05' }).pipe(Price).optional(),
  run: z.boolean().default(false),
});
export type JoinSettings = z.infer<typeof JoinSettings>;

const ServiceSettings = z.object({
  stateDir: z.string().min(1),
  unitPath: z.string().min(1).default('/etc/systemd/system/gantry-agent.service'),
  user: z.string().min(1).max(64).optional(),
});
export type ServiceSettings = z.infer<typeof ServiceSettings>;
const envFlag = z.enum(['0', '1', 'true', 'false']).transform((v) => v === '1' || v === 'true');

/** The runtime's settings, from GANTRY_AGENT_* variables (no flags: a provider sets them in the service's environment). */
export const RuntimeEnv = z.object({
  GANTRY_AGENT_WORK_DIR: z.string().min(1).optional(),
  GANTRY_AGENT_STOP_GRACE_SECONDS: z.coerce.number().int().min(0).max(3600).default(10),
  GANTRY_AGENT_PIDS_LIMIT: z.coerce.number().int().min(16).max(4_194_304).optional(),
  /** All jobs' processes together; default half the host's pid_max, never above it. */
  GANTRY_AGENT_PIDS_BUDGET: z.coerce.number().int().min(64).max(4_194_304).optional(),
  GANTRY_AGENT_DISK_SAMPLE_SECONDS: z.coerce.number().min(0.5).max(5).default(2),
  GANTRY_AGENT_LOG_CAP_BYTES: z.coerce.number().int().min(1024).default(defaultLogCapBytes),
  GANTRY_AGENT_OUTPUTS_MAX_BYTES: z.coerce.number().int().min(0).default(256 * 1024 * 1024),
  GANTRY_AGENT_KEEP_FAILED_CONTAINERS: envFlag.default(false),
  /** The cap on the images the agent pulled for jobs; the advertised free disk leaves it out. */
  GANTRY_AGENT_IMAGE_CACHE_MB: z.coerce.number().int().min(0).max(1_073_741_824).default(defaultImageCacheMb),
  /** Bridge jobs without the isolation rules, on Docker's default bridge: the provider's own risk (a dev machine). */
  GANTRY_AGENT_UNISOLATED_BRIDGE: envFlag.default(false),
});

/**
 * Each setting a flag can give, with its flag: the parseArgs options of every command and the
 * flag named in an error both come from here.
 */
const flags = {
  stateDir: { flag: 'state-dir', type: 'string' },
  heartbeatSeconds: { flag: 'heartbeat-seconds', type: 'string' },
  hardwareSeconds: { flag: 'hardware-seconds', type: 'string' },
  insecureHttp: { flag: 'insecure-http', type: 'boolean' },
  unsafeProcessRuntime: { flag: 'unsafe-process-runtime', type: 'boolean' },
  testExecutor: { flag: 'test-executor', type: 'boolean' },
  allowedRegistries: { flag: 'allow-registry', type: 'string', multiple: true },
  coordinatorUrl: { flag: 'coordinator', type: 'string' },
  token: { flag: 'token', type: 'string' },
  name: { flag: 'name', type: 'string' },
  labels: { flag: 'label', type: 'string', multiple: true },
  region: { flag: 'region', type: 'string' },
  priceGpuHour: { flag: 'price-gpu-hour', type: 'string' },
  priceCpuHour: { flag: 'price-cpu-hour', type: 'string' },
  run: { flag: 'run', type: 'boolean' },
  unitPath: { flag: 'unit-path', type: 'string' },
  user: { flag: 'user', type: 'string' },
} as const satisfies Record<string, { flag: string; type: 'string' | 'boolean'; multiple?: boolean }>;
type FlagKey = keyof typeof flags;

/** The parseArgs options for the settings a command takes: the keys of its zod object that have a flag. */
function optionsOf(schema: z.ZodObject): NonNullable<ParseArgsConfig['options']> {
  const options: NonNullable<ParseArgsConfig['options']> = {};
  for (const key of Object.keys(schema.shape)) {
    const f = flags[key as FlagKey] as { flag: string; type: 'string' | 'boolean'; multiple?: boolean } | undefined;
    if (f) options[f.flag] = f.multiple ? { type: f.type, multiple: true } : { type: f.type };
  }
  return options;
}

const flagOf = (key: string) => (key in flags ? `--${flags[key as FlagKey].flag}` : key);

function parse<T extends z.ZodType>(schema: T, input: Record<string, unknown>, flagOf: (key: string) => string): z.infer<T> {
  const defined = Object.fromEntries(Object.entries(input).filter(([, v]) => v !== undefined));
  const result = schema.safeParse(defined);
  if (result.success) return result.data;
  const issue = result.error.issues[0]!;
  const key = String(issue.path[0] ?? '');
  throw new UsageError(`${key ? `${flagOf(key)}: ` : ''}${issue.message}`);
}

function args(argv: string[], options: NonNullable<ParseArgsConfig['options']>) {
  try {
    return parseArgs({ args: argv, options, allowPositionals: false, strict: true }).values as Record<string, unknown>;
  } catch (err) {
    throw new UsageError((err as Error).message.split('\n')[0]!);
  }
}


/** --allow-registry (repeatable) or GANTRY_AGENT_ALLOWED_REGISTRIES (comma-separated); Docker Hub's other names are docker.io. */
function registryList(flags: string[] | undefined, envList: string | undefined): string[] | undefined {
  const given = flags?.length ? flags : envList?.split(',');
  const names = given?.map((r) => r.trim().toLowerCase()).filter(Boolean);
  if (!names?.length) return undefined;
  return [...new Set(names.map((r) => (r === 'index.docker.io' || r === 'registry-1.docker.io' ? 'docker.io' : r)))];
}

function runInput(v: Record<string, unknown>, env: Env) {
  return {
    stateDir: resolveStateDir(v['state-dir'] as string | undefined, env),
    heartbeatSeconds: v['heartbeat-seconds'] ?? env.GANTRY_AGENT_HEARTBEAT_SECONDS,
    hardwareSeconds: v['hardware-seconds'] ?? env.GANTRY_AGENT_HARDWARE_SECONDS,
    insecureHttp: v['insecure-http'] as boolean | undefined,
    unsafeProcessRuntime: v['unsafe-process-runtime'] as boolean | undefined,
    testExecutor: v['test-executor'] as boolean | undefined,
    allowedRegistries: registryList(v['allow-registry'] as string[] | undefined, env.GANTRY_AGENT_ALLOWED_REGISTRIES),
  };
}

export function parseRunArgs(argv: string[], env: Env = process.env): RunSettings {
  return parse(RunSettings, runInput(args(argv, optionsOf(RunSettings)), env), flagOf);
}

export function parseJoinArgs(argv: string[], env: Env = process.env): JoinSettings {
  const v = args(argv, optionsOf(JoinSettings));
  const labels: Record<string, string> = {};
  for (const kv of (v.label as string[] | undefined) ?? []) {
    const eq = kv.indexOf('=');
    if (eq <= 0) throw new UsageError(`--label: "${kv}" is not key=value`);
    labels[kv.slice(0, eq)] = kv.slice(eq + 1);
  }
  return parse(
    JoinSettings,
    {
      ...runInput(v, env),
      coordinatorUrl: v.coordinator ?? env.GANTRY_COORDINATOR_URL,
      token: v.token ?? env.GANTRY_ENROLLMENT_TOKEN ?? '',
      name: v.name,
      labels,
      region: v.region,
      priceGpuHour: v['price-gpu-hour'],
      priceCpuHour: v['price-cpu-hour'],
      run: v.run,
    },
    flagOf,
  );
}

export function parseServiceArgs(argv: string[], env: Env = process.env): ServiceSettings {
  const v = args(argv, optionsOf(ServiceSettings));
  return parse(
    ServiceSettings,
    {
      stateDir: resolveStateDir(v['state-dir'] as string | undefined, env),
      unitPath: v['unit-path'] ?? env.GANTRY_AGENT_UNIT_PATH,
      // Under sudo, the service runs as whoever ran sudo, not as root.
      user: v.user ?? env.SUDO_USER,
    },
    flagOf,
  );
}

/** The registries a node pulls from: --allow-registry (or its variable), else the list given at join, else the public ones. */
export function allowedRegistriesOf(settings: { allowedRegistries?: string[] | undefined }, node?: { allowedRegistries?: string[] | undefined } | null): string[] {
  return settings.allowedRegistries ?? node?.allowedRegistries ?? [...defaultAllowedRegistries];
}

/** A coordinator URL the agent will not use as it is. */
export class InsecureCoordinatorError extends Error {}

const loopbackHosts = /^(localhost|127(\.\d{1,3}){3}|\[::1\]|::1)$/i;

/**
 * Plain http:// is refused for a coordinator that is not on this machine: the enrollment token
 * and every lease would cross the network in clear. --insecure-http says the provider knows.
 */
export function checkCoordinatorUrl(url: string, insecureHttp: boolean): void {
  const u = new URL(url);
  if (u.protocol === 'http:' && !loopbackHosts.test(u.hostname) && !insecureHttp) {
    throw new InsecureCoordinatorError(
      `refusing plain http:// to ${u.host}: use https://, or pass --insecure-http if this network is trusted`,
    );
  }
}
