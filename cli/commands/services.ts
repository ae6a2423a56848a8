import { setTimeout as sleep } from 'node:timers/promises';
import type { ApiClient } from '../../shared/client.ts';
import { isTerminal, type Job } from '../../shared/jobs.ts';
import { CreatedServiceToken, ServiceTokenInfo, ServiceTokenList } from '../../shared/services.ts';
import { getJob, idArg, naming } from '../api.ts';
import { type Command, type Context, flagValue, str } from '../command.ts';
import { CliError, UsageError } from '../errors.ts';
import { type Column, printable, table } from '../output.ts';
import { parseDurationSeconds } from '../units.ts';

// Service jobs in the CLI: waiting for one to be ready, and the tokens that call it.

const tokenState = (t: ServiceTokenInfo) => (t.revokedAt ? 'revoked' : t.expiresAt && Date.parse(t.expiresAt) <= Date.now() ? 'expired' : 'active');

const tokenColumns: Column<ServiceTokenInfo>[] = [
  { header: 'ID', value: (t) => t.id },
  { header: 'NAME', value: (t) => t.name, flex: true },
  { header: 'PREFIX', value: (t) => `gst_${t.prefix}` },
  { header: 'STATE', value: tokenState },
  { header: 'EXPIRES', value: (t) => t.expiresAt ?? 'never' },
  { header: 'CREATED', value: (t) => t.createdAt },
];

export const serviceTokens: Command = {
  name: 'service-tokens',
  summary: "Tokens that call a service job in your stead: create one (shown once), list them, revoke one.",
  usage: ['service-tokens create JOB [--name NAME] [--expires DURATION]', 'service-tokens list JOB [--json]', 'service-tokens revoke JOB TOKEN_ID'],
  description:
    'Hand a token to your app\'s users instead of your API key: "Authorization: Bearer gst_..." calls the service, and\n' +
    'a browser opens SERVICE_URL/?gantry_token=gst_... once (the token becomes a cookie on that host only).\n' +
    'A revoked token stops at once, open requests included.',
  flags: {
    name: { type: 'string', arg: 'NAME', help: 'what the token is for (default "cli")' },
    expires: { type: 'string', arg: 'DURATION', help: 'how long it is good for, 1m to 366d: 30m, 1h, 7d (default: until revoked)' },
    json: { type: 'boolean', help: 'print the answer as JSON' },
  },
  positionals: { min: 2, max: 3 },
  async run(ctx, { values, positionals }) {
    const [sub, jobText, tokenId] = positionals;
    const jobId = idArg('job', jobText, 'service-tokens');
    const { api } = await ctx.connect();
    const base = `/v1/jobs/${jobId}/service-tokens`;
    if (sub === 'create') {
      if (tokenId) throw new UsageError('service-tokens create takes only the job id', 'service-tokens');
      const expiresInSeconds = flagValue('service-tokens', 'expires', str(values, 'expires'), parseDurationSeconds);
      const body = { name: str(values, 'name') ?? 'cli', ...(expiresInSeconds !== undefined ? { expiresInSeconds } : {}) };
      const made = await naming('job', jobId, api.post(base, body, CreatedServiceToken));
      if (values.json) ctx.stdout.write(`${JSON.stringify(made, null, 2)}\n`);
      else ctx.stdout.write(`Service token for ${jobId} (shown only this once${made.expiresAt ? `; until ${made.expiresAt}` : ''}):\n  ${made.token}\n`);
      return;
    }
    if (sub === 'list') {
      if (tokenId) throw new UsageError('service-tokens list takes only the job id', 'service-tokens');
      const { items } = await naming('job', jobId, api.get(base, ServiceTokenList));
      if (values.json) ctx.stdout.write(`${JSON.stringify(items, null, 2)}\n`);
      else if (!items.length) ctx.stdout.write(`No service tokens for ${jobId}: gantry service-tokens create ${jobId} makes one.\n`);
      else ctx.stdout.write(table(tokenColumns, items, { painter: ctx.out, width: ctx.stdoutIsTerminal ? ctx.stdout.columns : undefined }));
      return;
    }
    if (sub === 'revoke') {
      if (!tokenId) throw new UsageError('service-tokens revoke needs the job id and the token id (service-tokens list shows them)', 'service-tokens');
      const revoked = await naming('service token', tokenId, api.delete(`${base}/${encodeURIComponent(tokenId)}`, ServiceTokenInfo));
      ctx.stdout.write(values.json ? `${JSON.stringify(revoked, null, 2)}\n` : `Revoked ${revoked.id}: it calls ${jobId} no more.\n`);
      return;
    }
    throw new UsageError(`unknown service-tokens command "${sub}" (there are: create, list, revoke)`, 'service-tokens');
  },
};

/** "ready since ..." / "starting" / "stopped": a service's state in one line. */
export function serviceLine(j: Job): string | null {
  if (!j.service) return null;
  return j.service.state === 'ready' ? `ready since ${j.service.readyAt}` : j.service.state;
}

/**
 * Waits until a service job is ready and returns its URL; a job that ends first is an error.
 * The wait shows the job's state (queued and why, leased, starting).
 */
export async function waitForService(ctx: Context, api: ApiClient, jobId: string): Promise<string> {
  const progress = ctx.progress();
  try {
    for (;;) {
      const j = await getJob(api, jobId, ctx.signal);
      if (j.service?.state === 'ready' && j.serviceUrl) return j.serviceUrl;
      if (isTerminal(j.status)) throw new CliError(`${jobId} ended ${j.status}${j.error ? `: ${printable(j.error)}` : ''} before its service was ready`);
      const why = j.status === 'queued' ? `queued${j.pendingReason ? `: ${j.pendingReason}` : ''}` : j.status === 'leased' ? 'starting on its node' : 'running; waiting for its readiness check';
      progress.update(`waiting for the service to be ready (${why})`, why);
      await sleep(1000, undefined, { signal: ctx.signal });
    }
  } finally {
    progress.stop();
  }
}
