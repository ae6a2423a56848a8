import { chmod, mkdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { homedir } from 'node:os';
import { dirname, join } from 'node:path';
import { z } from 'zod';
import { CliError } from './errors.ts';

// The stored login: which coordinator and which API key. It holds a secret, so the file is
// 0600 in a 0700 folder, written whole through a rename so a crash never leaves half of it.

const StoredLogin = z.object({
  coordinator: z.url({ protocol: /^https?$/ }),
  apiKey: z.string().min(1).max(512),
});
export type StoredLogin = z.infer<typeof StoredLogin>;

export function configPath(env: NodeJS.ProcessEnv): string {
  const base = env.XDG_CONFIG_HOME && env.XDG_CONFIG_HOME.startsWith('/') ? env.XDG_CONFIG_HOME : join(env.HOME || homedir(), '.config');
  return join(base, 'gantry', 'config.json');
}

export async function readStoredLogin(env: NodeJS.ProcessEnv): Promise<StoredLogin | null> {
  const path = configPath(env);
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw new CliError(`cannot read ${path}: ${(err as Error).message}`);
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    throw new CliError(`${path} is not valid JSON; run gantry login again`);
  }
  const result = StoredLogin.safeParse(parsed);
  if (!result.success) throw new CliError(`${path} is not a gantry login; run gantry login again`);
  return result.data;
}

export async function writeStoredLogin(env: NodeJS.ProcessEnv, login: StoredLogin): Promise<string> {
  const path = configPath(env);
  await mkdir(dirname(path), { recursive: true, mode: 0o700 });
  const tmp = `${path}.${process.pid}.tmp`;
  await writeFile(tmp, `${JSON.stringify(login, null, 2)}\n`, { mode: 0o600 });
  // writeFile's mode is masked by the umask and ignored for a file that exists: set it outright.
  await chmod(tmp, 0o600);
  await rename(tmp, path);
  return path;
}

export async function removeStoredLogin(env: NodeJS.ProcessEnv): Promise<boolean> {
  const path = configPath(env);
  try {
    await rm(path);
    return true;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return false;
    throw err;
  }
}

/**
 * The CLI's settings from the environment: the one declaration of them, its output the type the
 * code reads. An empty variable counts as unset, as a shell user expects.
 */
const CliEnv = z
  .object({
    GANTRY_URL: z.string().optional(),
    GANTRY_API_KEY: z.string().optional(),
    // A timeout that is not a positive number falls back to 30 s rather than refusing the command.
    GANTRY_TIMEOUT_MS: z.coerce.number().positive().catch(30_000),
    GANTRY_DEBUG: z.string().optional(),
  })
  .transform((e) => ({ url: e.GANTRY_URL, apiKey: e.GANTRY_API_KEY, timeoutMs: e.GANTRY_TIMEOUT_MS, debug: e.GANTRY_DEBUG === '1' }));
export type CliSettings = z.output<typeof CliEnv>;

export function cliSettings(env: NodeJS.ProcessEnv): CliSettings {
  return CliEnv.parse(Object.fromEntries(Object.entries(env).filter(([, v]) => v !== undefined && v !== '')));
}

export interface Login {
  coordinator: string;
  apiKey: string | null;
  /** Where each part came from, for `gantry login --show` and error messages. */
  source: { coordinator: 'env' | 'config'; apiKey: 'env' | 'config' | 'none' };
}

/** The login to use: GANTRY_URL and GANTRY_API_KEY win over the stored one. */
export async function resolveLogin(env: NodeJS.ProcessEnv, needKey = true): Promise<Login> {
  const stored = await readStoredLogin(env);
  const settings = cliSettings(env);
  const url = settings.url ?? stored?.coordinator;
  const key = settings.apiKey ?? stored?.apiKey ?? null;
  if (!url) {
    throw new CliError('not logged in: run gantry login --coordinator URL --key KEY, or set GANTRY_URL and GANTRY_API_KEY');
  }
  if (!/^https?:\/\/[^/]/.test(url)) throw new CliError(`GANTRY_URL "${url}" is not an http(s) URL`);
  if (needKey && !key) throw new CliError('no API key: run gantry login --coordinator URL --key KEY, or set GANTRY_API_KEY');
  return {
    coordinator: url.replace(/\/+$/, ''),
    apiKey: key,
    source: {
      coordinator: settings.url ? 'env' : 'config',
      apiKey: settings.apiKey ? 'env' : stored?.apiKey ? 'config' : 'none',
    },
  };
}
