import { ApiClient, ApiRequestError } from '../../shared/client.ts';
import { Job } from '../../shared/jobs.ts';
import { pageOf } from '../../shared/pagination.ts';
import { type Command, str } from '../command.ts';
import { configPath, readStoredLogin, removeStoredLogin, resolveLogin, writeStoredLogin } from '../config.ts';
import { CliError, UsageError } from '../errors.ts';
import { details } from '../output.ts';

async function readStdin(): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const c of process.stdin) chunks.push(c as Buffer);
  return Buffer.concat(chunks).toString('utf8').trim();
}

/** The key's scopes as far as the API lets a key tell: it is checked, never trusted blindly. */
async function checkKey(coordinator: string, key: string): Promise<string> {
  const anonymous = new ApiClient({ baseUrl: coordinator, timeoutMs: 10_000 });
  const health = await anonymous.get<{ status?: string }>('/healthz').catch((err) => {
    if (err instanceof ApiRequestError) throw new CliError(`${coordinator} does not look like a Gantry coordinator (GET /healthz: HTTP ${err.status})`);
    throw err;
  });
  if (health?.status !== 'ok') throw new CliError(`${coordinator} does not look like a Gantry coordinator`);
  const api = new ApiClient({ baseUrl: coordinator, token: key, timeoutMs: 10_000 });
  try {
    await api.get('/v1/jobs?limit=1', pageOf(Job));
    return 'client';
  } catch (err) {
    if (!(err instanceof ApiRequestError)) throw err;
    if (err.status === 401) throw new CliError(`the coordinator refused the API key: ${err.problem?.detail ?? 'not valid'}; nothing was stored`);
    // 403: a real key without the client scope (a provider's key).
    if (err.status === 403) return 'provider';
    throw err;
  }
}

export const login: Command = {
  name: 'login',
  summary: 'Store the coordinator URL and your API key, after checking the key with the coordinator.',
  usage: ['login --coordinator URL --key KEY', 'login --show'],
  description:
    'The login is kept in $XDG_CONFIG_HOME/gantry/config.json (default ~/.config/gantry/config.json), readable\n' +
    'only by you (mode 0600). GANTRY_URL and GANTRY_API_KEY, when set, override it for one command.',
  flags: {
    coordinator: { type: 'string', arg: 'URL', help: 'the coordinator, e.g. https://gantry.example.com' },
    key: { type: 'string', arg: 'KEY', help: 'your API key (gk_...); "-" reads it from stdin, out of your shell history' },
    show: { type: 'boolean', help: 'print the login in use and where it comes from' },
  },
  positionals: { min: 0, max: 0 },
  examples: ['gantry login --coordinator http://localhost:8080 --key gk_...', 'pass show gantry | gantry login --coordinator https://gantry.example.com --key -'],
  async run(ctx, { values }) {
    if (values.show) {
      const l = await resolveLogin(ctx.env, false);
      const masked = l.apiKey ? `${l.apiKey.slice(0, 15)}…` : '(none)';
      ctx.stdout.write(
        details([
          ['coordinator', `${l.coordinator}${l.source.coordinator === 'env' ? ' (from GANTRY_URL)' : ''}`],
          ['api key', `${masked}${l.source.apiKey === 'env' ? ' (from GANTRY_API_KEY)' : ''}`],
          ['config', configPath(ctx.env)],
        ]),
      );
      return;
    }
    const stored = await readStoredLogin(ctx.env).catch(() => null);
    const coordinator = (str(values, 'coordinator') ?? stored?.coordinator)?.replace(/\/+$/, '');
    if (!coordinator) throw new UsageError('--coordinator URL is required', 'login');
    if (!/^https?:\/\/[^/\s]+/.test(coordinator)) throw new UsageError(`--coordinator: "${coordinator}" is not an http(s) URL`, 'login');
    let key = str(values, 'key');
    if (key === '-') key = await readStdin();
    if (!key) throw new UsageError('--key KEY is required (or --key - to read it from stdin)', 'login');
    const kind = await checkKey(coordinator, key);
    const path = await writeStoredLogin(ctx.env, { coordinator, apiKey: key });
    ctx.stdout.write(`Logged in to ${coordinator} with a ${kind} key; stored in ${path}\n`);
  },
};

export const logout: Command = {
  name: 'logout',
  summary: 'Forget the stored login.',
  usage: ['logout'],
  flags: {},
  positionals: { min: 0, max: 0 },
  async run(ctx) {
    const removed = await removeStoredLogin(ctx.env);
    ctx.stdout.write(removed ? `Removed ${configPath(ctx.env)}\n` : 'Not logged in\n');
  },
};
