// The gantry CLI as its own process against the real coordinator (in this process) whose log
// streams live two seconds: `gantry logs -f` resumes each ended stream from its last id, without
// a gap or a repeated line; and `gantry tokens list|revoke` for enrollment tokens.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { changeStatus } from '../../coordinator/jobs/lifecycle.ts';
import type { EnrollmentToken } from '../../shared/nodes.ts';
import { createTestNode, leaseTo, type TestNode } from '../support/agent-fixture.ts';
import { startCli } from '../support/cli-process.ts';
import { dbSkipReason, startHarness, type Harness } from '../support/harness.ts';
import { until } from '../support/until.ts';

const maxLifeSeconds = 2;
const postJson = (body: unknown) => ({ method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });

describe.skipIf(dbSkipReason)('gantry CLI and stream ends', () => {
  let h: Harness;
  let home: string;
  let node: TestNode;
  let client: Awaited<ReturnType<Harness['newAccount']>>;
  let provider: Awaited<ReturnType<Harness['newAccount']>>;
  const env = (key: string) => ({ HOME: home, XDG_CONFIG_HOME: join(home, 'xdg'), GANTRY_URL: h.url, GANTRY_API_KEY: key });

  beforeAll(async () => {
    h = await startHarness({ GANTRY_LOG_STREAM_MAX_SECONDS: String(maxLifeSeconds) });
    home = await mkdtemp(join(tmpdir(), 'gantry-cli-streams-'));
    client = await h.newAccount('client');
    provider = await h.newAccount('provider');
    node = await createTestNode(h, provider.accountId);
  });
  afterAll(async () => {
    await h?.close();
    if (home) await rm(home, { recursive: true, force: true });
  });

  it('gantry logs -f outlives several stream lives: every line once, in order, then the end', async () => {
    const job = await h.client(client.key).post<{ id: string }>('/v1/jobs', {
      name: 'long-talker',
      image: 'busybox',
      command: ['true'],
      resources: { cpu: 1, memoryMb: 64 },
    });
    await leaseTo(h, job.id, node.nodeId);
    const f = startCli(['logs', '-f', job.id], env(client.key));
    const lines: string[] = [];
    const started = Date.now();
    // Lines keep coming for well over two stream lives, so the CLI must resume at least twice.
    for (let seq = 0; Date.now() - started < maxLifeSeconds * 2500; seq++) {
      const line = `line ${seq}`;
      const res = await node.fetch(`/v1/agent/jobs/${job.id}/logs`, postJson({ epoch: 1, seq, stream: 'stdout', at: new Date().toISOString(), lines: [line] }));
      expect(res.status).toBe(200);
      lines.push(line);
      await until(`"${line}" shown`, () => f.output().stdout.includes(`${line}\n`), 20_000);
    }
    // Still following: a stream is open for it now.
    await until('the CLI following again', () => h.coordinator.deps.logFollowers.count === 1, 10_000);
    await h.coordinator.deps.database.db.transaction((tx) => changeStatus(tx, job.id, ['running'], 'failed', 'test', { exitCode: 4, finishedAt: new Date() }));
    const run = await f.done;
    expect(run.stdout).toBe(lines.map((l) => `${l}\n`).join(''));
    expect(run.stderr).toContain(`${job.id} failed with exit code 4`);
    expect(run.code).toBe(0);
  });

  it('gantry tokens list shows tokens without their secret; tokens revoke stops one from joining', async () => {
    const created = await provider.api.post<EnrollmentToken>('/v1/enrollment-tokens', { uses: 2, labels: { rack: 'b7' } });
    const list = await startCli(['tokens', 'list'], env(provider.key)).done;
    expect(list.stderr).toBe('');
    expect(list.code).toBe(0);
    expect(list.stdout).toMatch(new RegExp(`^${created.id}\\s+gnt_${created.token.split('_')[1]}\\s+usable\\s+2\\s+\\S+\\s+rack=b7$`, 'm'));
    expect(list.stdout).not.toContain(created.token.split('_')[2]);

    const revoked = await startCli(['tokens', 'revoke', created.id], env(provider.key)).done;
    expect(revoked.stderr).toBe('');
    expect(revoked.code).toBe(0);
    expect(revoked.stdout).toBe(`Revoked ${created.id}: no machine joins with it any more.\n`);
    const json = await startCli(['tokens', 'list', '--json'], env(provider.key)).done;
    expect(JSON.parse(json.stdout)).toEqual([expect.objectContaining({ id: created.id, revokedAt: expect.any(String) })]);

    const unknown = await startCli(['tokens', 'revoke', 'enr_0000000000000000000000'], env(provider.key)).done;
    expect(unknown.code).toBe(1);
    expect(unknown.stderr.trim().split('\n')).toHaveLength(1);
    expect(unknown.stderr).toMatch(/not found/);
    const missing = await startCli(['tokens', 'revoke'], env(provider.key)).done;
    expect(missing.code).not.toBe(0);
    expect(missing.stderr).toMatch(/needs the token id/);
  });
});
