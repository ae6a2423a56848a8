// The coordinator as its own process, logging every request: no line it prints, for a request that
// succeeds or fails in any way, holds a job's env values or a key.
import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawnCoordinator, type CoordinatorProcess } from '../support/coordinator-process.ts';

const marker = `envmarker${randomBytes(8).toString('hex')}`;
const spec = (over: Record<string, unknown> = {}, env: Record<string, string> = {}) => ({
  name: 'leak-check',
  image: 'busybox:latest',
  command: ['true'],
  resources: { cpu: 1, memoryMb: 64 },
  ...over,
  env: { SECRET: marker, ...env },
});

describe('what the coordinator logs', () => {
  let p: CoordinatorProcess;
  let url: string;
  let adminKey: string;
  beforeAll(async () => {
    p = spawnCoordinator({ PORT: '0', HOST: '127.0.0.1', GANTRY_DATA_DIR: 'memory://', GANTRY_LOG_REQUESTS: 'true', GANTRY_SHUTDOWN_GRACE_MS: '2000' });
    ({ url, adminKey } = (await p.ready) as { url: string; adminKey: string });
  });
  afterAll(async () => p?.stop(3000));

  it("never prints a spec's env values or a key, for any answer", async () => {
    const call = async (path: string, body: string, key: string | null, type = 'application/json') => {
      const res = await fetch(`${url}${path}`, {
        method: 'POST',
        headers: { 'content-type': type, ...(key ? { authorization: `Bearer ${key}` } : {}) },
        body,
      });
      await res.arrayBuffer();
      return res.status;
    };
    const account = await (await fetch(`${url}/v1/accounts`, { method: 'POST', headers: { authorization: `Bearer ${adminKey}`, 'content-type': 'application/json' }, body: JSON.stringify({ name: 'leak', kind: 'both' }) })).json();
    const created = await (await fetch(`${url}/v1/accounts/${account.id}/keys`, { method: 'POST', headers: { authorization: `Bearer ${adminKey}`, 'content-type': 'application/json' }, body: JSON.stringify({ scopes: ['client', 'provider'] }) })).json();
    const key = created.key as string;
    const token = await (await fetch(`${url}/v1/enrollment-tokens`, { method: 'POST', headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' }, body: JSON.stringify({ uses: 1 }) })).json();

    const statuses = [
      await call('/v1/jobs', JSON.stringify(spec()), key),
      await call('/v1/jobs/dry-run', JSON.stringify(spec()), key),
      // Text PostgreSQL cannot store, in the env itself and next to it.
      await call('/v1/jobs', JSON.stringify(spec({}, { NUL: `${marker}\u0000` })), key),
      await call('/v1/jobs', JSON.stringify(spec({}, { HALF: '\ud800' })), key),
      await call('/v1/jobs', JSON.stringify(spec({ name: 'a\u0000b' })), key),
      await call('/v1/jobs', JSON.stringify(spec({ resources: { cpu: 99_999, memoryMb: 1 } })), key),
      await call('/v1/jobs', `{"env": {"SECRET": "${marker}"`, key),
      await call('/v1/jobs', JSON.stringify(spec({ name: 'x'.repeat(2 << 20) })), key),
      await call('/v1/jobs', JSON.stringify(spec()), key, 'text/plain'),
      await call('/v1/jobs', JSON.stringify(spec()), `${key.slice(0, -4)}AAAA`),
      await call('/v1/agent/register', JSON.stringify({ token: token.token, publicKey: { kty: 'OKP' }, name: marker }), null),
    ];
    expect(statuses).toEqual([201, 200, 400, 400, 400, 400, 400, 413, 415, 401, 400]);

    await p.stop(3000);
    const lines = [...p.stdout, ...p.stderr];
    expect(lines.filter((l) => /"msg":"request"/.test(l)).length).toBeGreaterThanOrEqual(statuses.length);
    const secrets = [marker, key, key.split('_')[2]!, token.token as string];
    for (const s of secrets) expect(lines.filter((l) => l.includes(s))).toEqual([]);
  });
});
