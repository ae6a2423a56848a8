// The gantry CLI as its own process against the real coordinator (in this process, on a
// loopback port). Nodes and the agent's side of a lease come from the test fixtures that
// write the tables and post as an agent, so logs, outputs and offers have something to show.
import { spawn, spawnSync } from 'node:child_process';
import { createServer, type AddressInfo } from 'node:net';
import { createHash } from 'node:crypto';
import { mkdir, mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import tar from 'tar-stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { eq, sql } from 'drizzle-orm';
import { jobs, nodes } from '../../coordinator/db/schema/index.ts';
import { changeStatus } from '../../coordinator/jobs/lifecycle.ts';
import { toMicros } from '../../shared/money.ts';
import type { RegisteredNode } from '../../shared/nodes.ts';
import type { Job } from '../../shared/jobs.ts';
import { createTestNode, leaseTo, type TestNode } from '../support/agent-fixture.ts';
import { a5000Machine, newAgentKey } from '../support/agent-identity.ts';
import { startCli } from '../support/cli-process.ts';
import { repoRoot } from '../support/coordinator-process.ts';
import { dbSkipReason, startHarness, type Harness } from '../support/harness.ts';
import { gpusOf, h100, seedNode } from '../support/pool-seed.ts';

const sha = (b: Buffer) => `sha256:${createHash('sha256').update(b).digest('hex')}`;
const stackTrace = /^\s+at .+\(.*:\d+:\d+\)$/m;
const hasScript = spawnSync('script', ['--version']).status === 0;
if (!hasScript) console.warn('gantry CLI terminal tests skipped: script(1) from util-linux is not installed');

const start = startCli;

async function until<T>(what: string, probe: () => Promise<T | undefined | null | false> | T | undefined | null | false, ms = 20_000): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await probe();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

describe.skipIf(dbSkipReason)('gantry CLI', () => {
  let h: Harness;
  let home: string;
  let client: Awaited<ReturnType<Harness['newAccount']>>;
  let provider: Awaited<ReturnType<Harness['newAccount']>>;
  let node: TestNode;
  /** A fresh HOME and XDG_CONFIG_HOME per call site that wants one. */
  let homes = 0;
  const freshHome = async () => {
    const dir = join(home, `h${++homes}`);
    await mkdir(dir, { recursive: true });
    return { HOME: dir, XDG_CONFIG_HOME: join(dir, 'xdg') };
  };
  let asClient: Record<string, string>;
  /** A loopback port nothing listens on. */
  let closedUrl: string;
  const gantry = (args: string[], env: Record<string, string> = asClient, stdin?: string) => start(args, env, stdin).done;

  beforeAll(async () => {
    h = await startHarness({ GANTRY_POOL_CACHE_MS: '0' });
    home = await mkdtemp(join(tmpdir(), 'gantry-cli-'));
    client = await h.newAccount('client');
    provider = await h.newAccount('provider');
    node = await createTestNode(h, provider.accountId);
    asClient = { ...(await freshHome()), GANTRY_URL: h.url, GANTRY_API_KEY: client.key };
    const probe = createServer();
    await new Promise<void>((r) => probe.listen(0, '127.0.0.1', r));
    closedUrl = `http://127.0.0.1:${(probe.address() as AddressInfo).port}`;
    await new Promise((r) => probe.close(r));
  });
  afterAll(async () => {
    await h?.close();
    if (home) await rm(home, { recursive: true, force: true });
  });

  describe('login', () => {
    it('checks the key before storing it, 0600, and later commands use the stored login', async () => {
      const env = await freshHome();
      const config = join(env.XDG_CONFIG_HOME, 'gantry', 'config.json');

      const wrong = await gantry(['login', '--coordinator', h.url, '--key', 'gk_aaaaaaaaaaaa_bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb'], env);
      expect(wrong.code).toBe(1);
      expect(wrong.stderr.trim().split('\n')).toHaveLength(1);
      expect(wrong.stderr).toMatch(/refused the API key.*nothing was stored/);
      await expect(stat(config)).rejects.toThrow();

      const down = await gantry(['login', '--coordinator', closedUrl, '--key', client.key], env);
      expect(down.code).toBe(1);
      expect(down.stderr).toBe(`gantry login: cannot reach the coordinator at ${closedUrl} (ECONNREFUSED)\n`);

      const ok = await gantry(['login', '--coordinator', `${h.url}/`, '--key', '-'], env, `${client.key}\n`);
      expect(ok.stderr).toBe('');
      expect(ok.code).toBe(0);
      expect(ok.stdout).toContain(`Logged in to ${h.url} with a client key`);
      expect((await stat(config)).mode & 0o777).toBe(0o600);
      expect(JSON.parse(await readFile(config, 'utf8'))).toEqual({ coordinator: h.url, apiKey: client.key });

      const mine = await h.client(client.key).post<Job>('/v1/jobs', { name: 'stored-login', image: 'busybox', command: ['true'], resources: { cpu: 1, memoryMb: 64 } });
      const listed = await gantry(['jobs', '--json'], env);
      expect(listed.code).toBe(0);
      expect((JSON.parse(listed.stdout) as Job[]).map((j) => j.id)).toContain(mine.id);

      // GANTRY_URL and GANTRY_API_KEY win over the stored login.
      const overridden = await gantry(['jobs'], { ...env, GANTRY_URL: closedUrl });
      expect(overridden.code).toBe(1);
      expect(overridden.stderr).toBe(`gantry jobs: cannot reach the coordinator at ${closedUrl} (ECONNREFUSED)\n`);
      const badKey = await gantry(['jobs'], { ...env, GANTRY_API_KEY: 'gk_aaaaaaaaaaaa_bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb' });
      expect(badKey.code).toBe(1);
      expect(badKey.stderr).toMatch(/^gantry jobs: the coordinator refused the API key .*\n$/);

      const out = await gantry(['logout'], env);
      expect(out.code).toBe(0);
      const after = await gantry(['jobs'], env);
      expect(after.code).toBe(1);
      expect(after.stderr).toMatch(/^gantry jobs: not logged in: run gantry login/);
    });

    it('accepts a provider key (valid, without the client scope)', async () => {
      const env = await freshHome();
      const ok = await gantry(['login', '--coordinator', h.url, '--key', provider.key], env);
      expect(ok.code).toBe(0);
      expect(ok.stdout).toContain('with a provider key');
    });
  });

  describe('submit', () => {
    it('builds the spec from flags, with binary sizes, and prints the job id', async () => {
      const r = await gantry([
        'submit', '--name', 'train', '--image', 'pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime', '--gpus', '2', '--gpu-model', 'H100',
        '--cpu', '8', '--memory', '64G', '--max-price', '4.5', '--env', 'EPOCHS=3', '--env', 'URL=a=b', '--label', 'team=vision',
        '--timeout', '2h', '--retries', '4', '--', 'python', 'train.py', '--epochs', '3',
      ]);
      expect(r.stderr).not.toMatch(stackTrace);
      expect(r.code).toBe(0);
      expect(r.stdout).toMatch(/^job_[0-9a-z]{22}\n$/);
      const job = await h.client(client.key).get<Job>(`/v1/jobs/${r.stdout.trim()}`);
      expect(job.spec).toMatchObject({
        name: 'train',
        image: 'pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime',
        command: ['python', 'train.py', '--epochs', '3'],
        resources: { cpu: 8, memoryMb: 65536, gpus: 2, gpu: { model: 'H100' } },
        maxPricePerHour: 4.5,
        env: { EPOCHS: '3', URL: 'a=b' },
        labels: { team: 'vision' },
        timeoutSeconds: 7200,
        maxAttempts: 5,
      });
    });

    it('submits a YAML or JSON job file as the API takes it, flags overriding its fields', async () => {
      const dir = await mkdtemp(join(home, 'jobs-'));
      const yaml = join(dir, 'job.yaml');
      await writeFile(yaml, 'name: from-yaml\nimage: busybox:latest\ncommand: [sh, -c, "echo hi"]\nresources:\n  cpu: 0.5\n  memoryMb: 256\n');
      const json = join(dir, 'job.json');
      await writeFile(json, JSON.stringify({ name: 'from-json', image: 'busybox', command: ['true'], resources: { cpu: 1, memoryMb: 64 }, priority: 5 }));
      const a = await gantry(['submit', yaml, '--memory', '1.5G']);
      const b = await gantry(['submit', json]);
      expect([a.code, b.code]).toEqual([0, 0]);
      const api = h.client(client.key);
      expect((await api.get<Job>(`/v1/jobs/${a.stdout.trim()}`)).spec).toMatchObject({ name: 'from-yaml', command: ['sh', '-c', 'echo hi'], resources: { cpu: 0.5, memoryMb: 1536 } });
      expect((await api.get<Job>(`/v1/jobs/${b.stdout.trim()}`)).spec).toMatchObject({ name: 'from-json', priority: 5 });
    });

    it('names each problem of a bad job file with its field and line, and submits nothing', async () => {
      const before = (await h.client(client.key).get<{ items: Job[] }>('/v1/jobs?limit=200')).items.length;
      const dir = await mkdtemp(join(home, 'bad-'));
      const file = join(dir, 'bad.yaml');
      await writeFile(file, ['name: bad', 'image: busybox', 'command: echo hi', 'resources:', '  cpu: 1', '  memoryMb: 64G', '  gpuz: 1'].join('\n'));
      const r = await gantry(['submit', file]);
      expect(r.code).toBe(2);
      expect(r.stdout).toBe('');
      const lines = r.stderr.trim().split('\n');
      expect(lines).toEqual([
        expect.stringMatching(/^bad\.yaml:3: command: expected array.*\["echo", "hi"\]$/),
        expect.stringMatching(/^bad\.yaml:6: resources\.memoryMb: expected number.*64G is 65536$/),
        'bad.yaml:7: resources.gpuz: unknown field',
      ]);
      const flagged = await gantry(['submit', file, '--memory', '64G', '--cpu', '0.0001', '--', 'echo', 'hi']);
      expect(flagged.code).toBe(2);
      expect(flagged.stderr).toMatch(/^gantry submit: --cpu: resources\.cpu: at most 3 decimals$/m);
      expect(flagged.stderr).toContain('bad.yaml:7: resources.gpuz: unknown field');
      const syntax = join(dir, 'syntax.yaml');
      await writeFile(syntax, 'name: x\nimage: [busybox\n');
      const s = await gantry(['submit', syntax]);
      expect(s.code).toBe(2);
      expect(s.stderr).toMatch(/^syntax\.yaml:\d+: /);
      const missing = await gantry(['submit', join(dir, 'nope.yaml')]);
      expect(missing.code).toBe(1);
      expect(missing.stderr).toMatch(/^gantry submit: cannot read job file .*nope\.yaml: no such file\n$/);
      for (const run of [r, flagged, s, missing]) expect(run.stderr).not.toMatch(stackTrace);
      expect((await h.client(client.key).get<{ items: Job[] }>('/v1/jobs?limit=200')).items.length).toBe(before);
    });

    it('uploads a file and a folder as inputs and names them in the spec by digest', async () => {
      const dir = await mkdtemp(join(home, 'inputs-'));
      await writeFile(join(dir, 'config.json'), '{"lr":0.001}\n');
      await mkdir(join(dir, 'data', 'nested'), { recursive: true });
      await writeFile(join(dir, 'data', 'a.csv'), 'x,y\n1,2\n');
      await writeFile(join(dir, 'data', 'nested', 'b.txt'), 'bee\n');
      const r = await gantry(['submit', '--image', 'busybox', '--input', join(dir, 'config.json'), '--input', `${join(dir, 'data')}:train/`, '--', 'ls', '/inputs']);
      expect(r.stderr).not.toMatch(stackTrace);
      expect(r.code).toBe(0);
      const job = await h.client(client.key).get<Job>(`/v1/jobs/${r.stdout.trim()}`);
      const inputs = job.spec.inputs!;
      expect(inputs.map((i) => i.path)).toEqual(['config.json', 'train/']);
      expect(inputs[0]!.digest).toBe(sha(Buffer.from('{"lr":0.001}\n')));
      // The folder went up as a tar holding its files, under the digest the spec names.
      const res = await h.fetch(`/v1/blobs/${inputs[1]!.digest}`, { key: client.key });
      expect(res.status).toBe(200);
      const bytes = Buffer.from(await res.arrayBuffer());
      expect(sha(bytes)).toBe(inputs[1]!.digest);
      const files: Record<string, string> = {};
      const extract = tar.extract();
      const reading = (async () => {
        for await (const entry of extract) {
          let body = '';
          for await (const c of entry) body += Buffer.from(c as Uint8Array).toString();
          if (entry.header.type === 'file') files[entry.header.name] = body;
        }
      })();
      extract.end(bytes);
      await reading;
      expect(files).toEqual({ 'a.csv': 'x,y\n1,2\n', 'nested/b.txt': 'bee\n' });
    });

    it('refuses bad flags with exit 2 and one line', async () => {
      for (const args of [['submit', '--gpus', 'two', '--image', 'busybox', '--', 'true'], ['submit', '--memory', '12Q', '--image', 'busybox', '--', 'true'], ['submit', '--frobnicate'], ['submit', '--image', 'busybox'], ['jobs', '--status', 'done'], ['job', 'nope']]) {
        const r = await gantry(args);
        expect(r.code, args.join(' ')).toBe(2);
        expect(r.stderr.trim().split('\n'), args.join(' ')).toHaveLength(1);
        expect(r.stderr).toMatch(/see gantry \w+ --help\)\n$/);
      }
    });
  });

  describe('jobs, job, cancel', () => {
    it('lists jobs as a table and as JSON, filters by status, shows one, cancels it', async () => {
      const api = h.client(client.key);
      const a = await api.post<Job>('/v1/jobs', { name: 'alpha-job', image: 'busybox', command: ['true'], resources: { cpu: 1, memoryMb: 64, gpus: 1, gpu: { model: 'H100' } } });
      const table = await gantry(['jobs']);
      expect(table.code).toBe(0);
      const [header, ...rows] = table.stdout.trimEnd().split('\n');
      expect(header).toMatch(/^ID\s+NAME\s+STATUS\s+GPUS\s+NODE\s+CREATED\s+RAN$/);
      expect(rows.find((l) => l.startsWith(a.id))).toMatch(/alpha-job\s+queued\s+1× H100/);
      expect(table.stdout).not.toContain('\x1b');

      const one = await gantry(['job', a.id]);
      expect(one.code).toBe(0);
      expect(one.stdout).toMatch(/^status\s+queued$/m);
      expect(one.stdout).toMatch(/^resources\s+1 CPU, 64M, 1× H100 GPU$/m);
      expect(one.stdout).toMatch(/queued\s+submitted/);

      const cancelled = await gantry(['cancel', a.id]);
      expect(cancelled.code).toBe(0);
      expect(cancelled.stdout).toBe(`${a.id} cancelled\n`);
      expect((await api.get<Job>(`/v1/jobs/${a.id}`)).status).toBe('cancelled');

      const onlyCancelled = JSON.parse((await gantry(['jobs', '--status', 'cancelled', '--json'])).stdout) as Job[];
      expect(onlyCancelled.map((j) => j.id)).toContain(a.id);
      expect(onlyCancelled.every((j) => j.status === 'cancelled')).toBe(true);

      const again = await gantry(['cancel', a.id]);
      expect(again.code).toBe(1);
      expect(again.stderr).toBe('gantry cancel: the job already ended cancelled\n');
    });

    it("says a job that does not exist (or is another tenant's) was not found", async () => {
      const theirs = await h.client((await h.newAccount('client')).key).post<Job>('/v1/jobs', { name: 'theirs', image: 'busybox', command: ['true'], resources: { cpu: 1, memoryMb: 64 } });
      for (const args of [['job', theirs.id], ['cancel', theirs.id], ['logs', theirs.id], ['job', 'job_00000000000000000000zz']]) {
        const r = await gantry(args);
        expect(r.code, args.join(' ')).toBe(1);
        expect(r.stderr).toMatch(/^gantry \w+: job job_\w+ not found \(or it is not yours\)\n$/);
      }
    });
  });

  describe('job arrays', () => {
    it('submits an array (YAML, or --tasks and --max-parallel), shows its counts, one line per array, and lists its tasks', async () => {
      const own = await h.newAccount('client');
      const env = { ...(await freshHome()), GANTRY_URL: h.url, GANTRY_API_KEY: own.key };
      const dir = await mkdtemp(join(home, 'array-'));
      const file = join(dir, 'sweep.yaml');
      // More CPU than any node has: the tasks wait, so what is shown stays put.
      await writeFile(file, 'name: sweep\nimage: busybox\ncommand: [sh, -c, "echo $GANTRY_TASK_INDEX"]\nresources:\n  cpu: 1000\n  memoryMb: 64\ntasks:\n  count: 3\n');
      const fromFile = await gantry(['submit', file], env);
      expect(fromFile.code, fromFile.stderr).toBe(0);
      const r = await gantry(['submit', file, '--tasks', '5', '--max-parallel', '2'], env);
      expect(r.code, r.stderr).toBe(0);
      const id = r.stdout.trim();
      const one = await gantry(['job', id], env);
      expect(one.stdout).toMatch(/^tasks\s+5 tasks: 5 queued; at most 2 at once/m);
      const list = await gantry(['jobs'], env);
      const [header, ...rows] = list.stdout.trimEnd().split('\n');
      expect(header).toMatch(/^ID\s+NAME\s+TASKS\s+STATUS\s+GPUS/);
      expect(rows).toHaveLength(2);
      expect(rows[0]).toMatch(new RegExp(`^${id}\\s+sweep\\s+0/5\\s+queued`));
      expect(rows[1]).toMatch(/sweep\s+0\/3\s+queued/);
      const tasks = await gantry(['tasks', id], env);
      expect(tasks.code, tasks.stderr).toBe(0);
      const [taskHeader, ...taskRows] = tasks.stdout.trimEnd().split('\n');
      expect(taskHeader).toMatch(/^INDEX\s+ID\s+STATUS/);
      expect(taskRows.map((l) => l.trim().split(/\s+/)[0])).toEqual(['0', '1', '2', '3', '4']);
      const tooMany = await gantry(['submit', file, '--tasks', '10001'], env);
      expect(tooMany.code).not.toBe(0);
      expect(tooMany.stderr).toMatch(/--tasks/);
      expect(tooMany.stderr).not.toMatch(stackTrace);
      const overParallel = await gantry(['submit', file, '--tasks', '2', '--max-parallel', '3'], env);
      // Checked against the spec's schema before anything is sent, like every field of a job file.
      expect(overParallel.code).toBe(2);
      expect(overParallel.stderr).toMatch(/tasks\.maxParallel.*maxParallel is at most count/);
      const cancelled = await gantry(['cancel', id], env);
      expect(cancelled.stdout).toBe(`${id} cancelled\n`);
      expect((await h.client(own.key).get<Job>(`/v1/jobs/${id}`)).tasks).toMatchObject({ cancelled: 5, queued: 0 });
    });
  });

  describe('following a job', () => {
    it('submit --follow shows the wait as plain lines off a terminal, streams logs, and exits with the exit code', async () => {
      // A GPU no node has: the scheduler leaves it queued until the test leases it.
      const f = start(['submit', '--image', 'busybox', '--name', 'follow-me', '--gpus', '1', '--gpu-model', 'NoSuchGPU', '--follow', '--', 'sh', '-c', 'exit 3'], asClient);
      const jobId = await until('the job id', () => f.output().stdout.match(/^(job_\w+)\n/)?.[1]);
      await until('the queued line', () => f.output().stderr.includes(`${jobId} queued`));
      await leaseTo(h, jobId, node.nodeId, 'running');
      const post = (seq: number, stream: string, lines: string[]) =>
        node.fetch(`/v1/agent/jobs/${jobId}/logs`, {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify({ epoch: 1, seq, stream, at: new Date().toISOString(), lines }),
        });
      expect((await post(0, 'stdout', ['hello from the job', 'line two'])).status).toBe(200);
      expect((await post(1, 'stderr', ['a warning'])).status).toBe(200);
      await until('the log lines', () => f.output().stdout.includes('line two\n') && f.output().stderr.includes('a warning\n'));
      await h.coordinator.deps.database.db.transaction((tx) =>
        changeStatus(tx, jobId, ['running'], 'failed', 'exit code 3', { exitCode: 3, finishedAt: new Date() }),
      );
      const r = await f.done;
      expect(r.code).toBe(3);
      expect(r.stdout).toBe(`${jobId}\nhello from the job\nline two\n`);
      expect(r.stderr).toContain('a warning\n');
      expect(r.stderr).toMatch(new RegExp(`${jobId} failed with exit code 3`));
      // Not a terminal: no spinner frames, no carriage returns, no colour.
      expect(r.stderr).not.toMatch(/[\r\x1b]/);

      const logs = await gantry(['logs', jobId]);
      expect(logs.code).toBe(0);
      expect(logs.stdout).toBe('hello from the job\nline two\n');
      expect(logs.stderr).toBe('a warning\n');
    });

    it('logs -f ends with the job, and a cancelled job makes submit --follow exit 1', async () => {
      const f = start(['submit', '--image', 'busybox', '--gpus', '1', '--gpu-model', 'NoSuchGPU', '--follow', '--', 'sleep', '100'], asClient);
      const jobId = await until('the job id', () => f.output().stdout.match(/^(job_\w+)\n/)?.[1]);
      const logs = start(['logs', '-f', jobId], asClient);
      await until('the follower waiting', () => logs.output().stderr.includes('queued'));
      await h.client(client.key).post(`/v1/jobs/${jobId}/cancel`);
      const [sub, log] = await Promise.all([f.done, logs.done]);
      expect(sub.code).toBe(1);
      expect(sub.stderr).toContain(`${jobId} cancelled`);
      expect(log.code).toBe(0);
      expect(log.stderr).toContain(`${jobId} cancelled`);
    });
  });

  describe.skipIf(!hasScript)('on a terminal (a pseudo-terminal from script(1))', () => {
    const onTerminal = (args: string[], env: Record<string, string>) => {
      const command = ['node', '--import', 'tsx', 'cli/main.ts', ...args].map((a) => `'${a.replace(/'/g, `'\\''`)}'`).join(' ');
      const clean: Record<string, string> = {};
      for (const [k, v] of Object.entries(process.env)) if (v !== undefined && !k.startsWith('GANTRY_') && k !== 'NO_COLOR') clean[k] = v;
      const child = spawn('script', ['-qfec', command, '/dev/null'], { cwd: repoRoot, env: { ...clean, TERM: 'xterm-256color', ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
      let out = '';
      child.stdout.on('data', (c: Buffer) => (out += c.toString()));
      child.stderr.on('data', (c: Buffer) => (out += c.toString()));
      return { output: () => out, done: new Promise<number | null>((r) => child.on('close', r)) };
    };

    it('spins and colours on a terminal, and does neither with NO_COLOR', async () => {
      for (const noColor of [false, true]) {
        const env = { ...asClient, ...(noColor ? { NO_COLOR: '1' } : {}) };
        const t = onTerminal(['submit', '--image', 'busybox', '--gpus', '1', '--gpu-model', 'NoSuchGPU', '--follow', '--', 'true'], env);
        const jobId = await until('the job id', () => t.output().match(/(job_[0-9a-z]{22})/)?.[1]);
        await until('the wait shown', () => t.output().includes('queued'));
        if (!noColor) await until('a second spinner frame', () => (t.output().match(/\r\x1b\[K/g) ?? []).length >= 2);
        await h.client(client.key).post(`/v1/jobs/${jobId}/cancel`);
        expect(await t.done).toBe(1);
        const out = t.output();
        if (noColor) {
          expect(out).not.toMatch(/\x1b\[/);
          expect(out).toMatch(new RegExp(`${jobId} queued \\d+s: `));
        } else {
          expect(out).toMatch(/\x1b\[36m[⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏]\x1b\[39m job_\w+ queued/);
        }
        expect(out).toContain(`${jobId} cancelled`);
      }
    });
  });

  describe('outputs', () => {
    it('downloads and unpacks outputs, leaving out entries that would escape the folder', async () => {
      const job = await h.client(client.key).post<Job>('/v1/jobs', { name: 'out', image: 'busybox', command: ['true'], resources: { cpu: 1, memoryMb: 64 } });
      await leaseTo(h, job.id, node.nodeId, 'running');
      const pack = tar.pack();
      pack.entry({ name: 'result.json' }, '{"loss":0.25}');
      pack.entry({ name: 'ckpt/model.bin' }, 'weights');
      pack.entry({ name: '../escaped.txt' }, 'should not land');
      pack.entry({ name: 'link', type: 'symlink', linkname: '/etc/passwd' });
      pack.finalize();
      const chunks: Buffer[] = [];
      for await (const c of pack) chunks.push(Buffer.from(c as Uint8Array));
      const up = await node.fetch(`/v1/agent/jobs/${job.id}/outputs?epoch=1`, { method: 'POST', body: new Uint8Array(Buffer.concat(chunks)), headers: { 'content-type': 'application/x-tar' } });
      expect(up.status).toBe(201);

      const parent = await mkdtemp(join(home, 'out-'));
      const dir = join(parent, 'here');
      const r = await gantry(['outputs', job.id, '-o', dir]);
      expect(r.code).toBe(0);
      expect(r.stdout).toBe(`2 files (20 bytes) in ${dir}\n`);
      expect(r.stderr).toContain('../escaped.txt');
      expect(r.stderr).toContain('link');
      expect(await readFile(join(dir, 'result.json'), 'utf8')).toBe('{"loss":0.25}');
      expect(await readFile(join(dir, 'ckpt', 'model.bin'), 'utf8')).toBe('weights');
      await expect(stat(join(parent, 'escaped.txt'))).rejects.toThrow();

      const raw = await gantry(['outputs', job.id, '-o', '-']);
      expect(raw.code).toBe(0);
      expect(raw.stdout.length).toBeGreaterThan(0);
    });
  });

  describe('the pool, offers and dry runs', () => {
    let gpuNode: string;
    beforeAll(async () => {
      ({ nodeId: gpuNode } = await seedNode(h.coordinator.deps.database.db, provider.accountId, {
        region: 'eu-west',
        cpu: 32,
        pricePerGpuHour: 3,
        pricePerCpuHour: 0.1,
        gpus: gpusOf(h100, 81_559, 4),
      }));
    });

    it('pool shows GPUs by model without a key', async () => {
      const r = await gantry(['pool'], { ...(await freshHome()), GANTRY_URL: h.url });
      expect(r.stderr).toBe('');
      expect(r.code).toBe(0);
      const row = r.stdout.split('\n').find((l) => l.startsWith(h100));
      expect(row).toMatch(/^NVIDIA H100 80GB HBM3\s+79\.6G\s+4\s+4\s+0\s+0\s+0\s+-\s+3\.00\s+3\.00\s+3\.00$/);
      expect(r.stdout).toMatch(/GPUs 4 free of 4 online/);
    });

    it('offers lists free capacity with the price for the shape', async () => {
      const r = await gantry(['offers', '--gpu', 'H100', '--gpus', '2']);
      expect(r.code).toBe(0);
      const row = r.stdout.split('\n').find((l) => l.startsWith(gpuNode));
      expect(row).toMatch(/NVIDIA H100 80GB HBM3\s+4\/4\s+79\.6G\s+32\s+64G\s+6\.00\s+eu-west\s+0 ok, 0 failed, 0 lost$/);
      const none = await gantry(['offers', '--gpu', 'B200']);
      expect(none.code).toBe(0);
      expect(none.stdout).toMatch(/^No node has 1 GPU of model B200 free right now/);
    });

    it('submit --dry-run shows the offer, the cost per hour, and why the rest are ruled out; nothing is queued', async () => {
      const before = (await h.client(client.key).get<{ items: Job[] }>('/v1/jobs?limit=200')).items.length;
      const fits = await gantry(['submit', '--dry-run', '--image', 'busybox', '--name', 'dry', '--gpus', '2', '--gpu-model', 'H100', '--cpu', '4', '--memory', '8G', '--timeout', '2h', '--', 'true']);
      expect(fits.stderr).toBe('');
      expect(fits.code).toBe(0);
      expect(fits.stdout).toContain(gpuNode);
      expect(fits.stdout).toMatch(/estimated cost: 6\.40\/hour, at most 12\.80 if it runs to its 2h timeout/);
      expect(fits.stdout).toMatch(/other nodes:\n  1 node with no H100 GPU\n/);

      const none = await gantry(['submit', '--dry-run', '--image', 'busybox', '--gpus', '2', '--gpu-model', 'H100', '--max-price', '1', '--', 'true']);
      expect(none.code).toBe(1);
      expect(none.stdout).toMatch(/^No node can take busybox right now/);
      expect(none.stdout).toMatch(/why not:\n  1 node with no H100 GPU\n  1 node over the maximum of 1 per hour/);
      expect((await h.client(client.key).get<{ items: Job[] }>('/v1/jobs?limit=200')).items.length).toBe(before);
    });
  });

  describe('providers: tokens and nodes', () => {
    it('tokens create prints the token and the join line; the token enrolls a machine that gantry nodes then lists', async () => {
      const asProvider = { ...(await freshHome()), GANTRY_URL: h.url, GANTRY_API_KEY: provider.key };
      const r = await gantry(['tokens', 'create', '--uses', '2', '--expires', '2h', '--label', 'rack=b7'], asProvider);
      expect(r.stderr).toBe('');
      expect(r.code).toBe(0);
      const token = r.stdout.match(/^  (\S+)$/m)?.[1];
      expect(token).toBeTruthy();
      expect(r.stdout).toContain(`gantry-agent join --coordinator ${h.url} --token ${token}\n`);
      expect(r.stdout).toMatch(/2 uses, until \S+; nodes get rack=b7/);

      const { publicJwk } = await newAgentKey();
      const registered = await h.client().post<RegisteredNode>('/v1/agent/register', { token, publicKey: publicJwk, name: 'rig-cli', hardware: a5000Machine('cli', 2) });
      const listed = await gantry(['nodes'], asProvider);
      expect(listed.code).toBe(0);
      const [header, ...rows] = listed.stdout.trimEnd().split('\n');
      expect(header).toMatch(/^ID\s+NAME\s+STATUS\s+GPUS FREE\s+GPU UTIL\s+CPU USED\s+MEM USED\s+GPU-HOUR\s+REGION\s+LAST SEEN$/);
      expect(rows.find((l) => l.startsWith(registered.nodeId))).toMatch(/rig-cli\s+online\s+2\/2 RTX A5000\s+-\s+[\d.]+\/16\s+\S+\/62\.5G\s+0\.00\s+-\s+(just now|\d+s ago)$/);
      const json = JSON.parse((await gantry(['nodes', '--json'], asProvider)).stdout) as { id: string; labels: Record<string, string> }[];
      expect(json.find((n) => n.id === registered.nodeId)?.labels).toEqual({ rack: 'b7' });

      const asClientOnly = await gantry(['tokens', 'create'], asClient);
      expect(asClientOnly.code).toBe(1);
      expect(asClientOnly.stderr).toMatch(/^gantry tokens: not allowed: this key lacks the provider scope\n$/);
      const bad = await gantry(['tokens', 'make'], asProvider);
      expect(bad.code).toBe(2);
    });
  });

  describe('usage', () => {
    it('shows spend by day and by job', async () => {
      const spender = await h.newAccount('client');
      const j = await spender.api.post<Job>('/v1/jobs', { name: 'metered', image: 'busybox', command: ['true'], resources: { cpu: 2, memoryMb: 1024, gpus: 1, gpu: { model: 'NoSuchGPU' } } });
      const usage = { seconds: 1800, gpuSeconds: { [h100]: 1800 }, cpuCoreSeconds: 3600, memoryMbSeconds: 1800 * 1024 };
      const finishedAt = new Date();
      await h.coordinator.deps.database.db
        .update(jobs)
        .set({ status: 'succeeded', nodeId: node.nodeId, startedAt: new Date(finishedAt.getTime() - 1_800_000), finishedAt, costMicros: toMicros(1.5), usage })
        .where(eq(jobs.id, j.id));
      const r = await gantry(['usage'], { ...(await freshHome()), GANTRY_URL: h.url, GANTRY_API_KEY: spender.key });
      expect(r.stderr).toBe('');
      expect(r.code).toBe(0);
      expect(r.stdout).toMatch(/^spent: 1\.50 over 1 job$/m);
      const day = finishedAt.toISOString().slice(0, 10);
      expect(r.stdout).toMatch(new RegExp(`^${day}\\s+1\\s+30m\\s+1h\\s+1\\.50$`, 'm'));
      expect(r.stdout).toMatch(new RegExp(`^${j.id}\\s+metered\\s+succeeded\\s+${node.nodeId}\\s+30m\\s+30m\\s+1\\.50$`, 'm'));
      const bad = await gantry(['usage', '--since', 'yesterday']);
      expect(bad.code).toBe(2);
    });
  });

  describe('balance and ledger', () => {
    it('shows a client its balance, held and available, and its ledger lines; refuses a bad --since', async () => {
      const payer = await h.newAccount('client', undefined, { credit: 12.5 });
      await h.admin.post(`/v1/accounts/${payer.accountId}/adjustments`, { amount: -0.25, reason: 'correction', reference: 'fix-1' });
      const env = { ...(await freshHome()), GANTRY_URL: h.url, GANTRY_API_KEY: payer.key };
      const b = await gantry(['balance'], env);
      expect(b.stderr).toBe('');
      expect(b.code).toBe(0);
      expect(b.stdout).toBe('balance    12.25\nheld       0.00\navailable  12.25\n');
      const l = await gantry(['ledger'], env);
      expect(l.code).toBe(0);
      expect(l.stdout).toMatch(/^TIME\s+SIDE\s+WHAT\s+AMOUNT\s+JOB\s+NODE\s+REFERENCE$/m);
      expect(l.stdout).toMatch(/\sclient\s+deposit\s+12\.50\s+-\s+-\s+harness$/m);
      expect(l.stdout).toMatch(/\sclient\s+adjustment\s+-0\.25\s+-\s+-\s+fix-1: correction$/m);
      const p = await gantry(['balance'], { ...env, GANTRY_API_KEY: provider.key });
      expect(p.stdout).toBe('earned     0.00\npaid out   0.00\npayable    0.00\n');
      const bad = await gantry(['ledger', '--since', 'yesterday'], env);
      expect(bad.code).toBe(2);
      expect(bad.stderr).toBe('gantry ledger: --since: "yesterday" is not a day like 2026-11-01 or an ISO time (see gantry ledger --help)\n');
    });
  });

  describe('a hostile node', () => {
    // What a node sends is data: escape sequences (a window title, a screen clear, a cursor move),
    // a bell, NUL and lone surrogates in its finish error, progress notes, log lines and archive
    // names never reach the client's terminal as such, and its outputs never fill the disk.
    const hostile = `boom\u001b]0;owned\u0007\u001b[2J\u001b[1;1H\u001b[31mred\u001b[0m\u0000\ud800\udfff\u009b2J\u0007`;
    /** What is left of terminal output once its colours (SGR) are taken out: no control character but \t, \n and \r. */
    const expectNoEscapes = (what: string, out: string) => expect(out.replace(/\x1b\[[0-9;]*m/g, ''), what).not.toMatch(/[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]/);
    const asAgent = (path: string, body: unknown) =>
      node.fetch(path, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
    /** Leases a job to the test node as the scheduler would: running, with its CPU and memory taken from the node. */
    async function running(jobId: string) {
      await leaseTo(h, jobId, node.nodeId, 'running');
      await h.coordinator.deps.database.db
        .update(nodes)
        .set({ allocatedCpuMillis: sql`${nodes.allocatedCpuMillis} + 1000`, allocatedMemoryMb: sql`${nodes.allocatedMemoryMb} + 1024` })
        .where(eq(nodes.id, node.nodeId));
    }
    const queuedJob = () => ['--image', 'busybox', '--gpus', '1', '--gpu-model', 'NoSuchGPU', '--cpu', '1', '--memory', '1G'];

    it('cannot reach the terminal through wait, logs -f, submit --follow, job and logs', async () => {
      const f = start(['submit', ...queuedJob(), '--follow', '--', 'true'], asClient);
      const followers = [f];
      try {
        const jobId = await until('the job id', () => f.output().stdout.match(/^(job_\w+)\n/)?.[1]);
        const waiter = start(['wait', jobId], asClient);
        const logsF = start(['logs', '-f', jobId], asClient);
        followers.push(waiter, logsF);
        await until('the followers waiting', () => waiter.output().stderr.includes('queued') && logsF.output().stderr.includes('queued'));
        await running(jobId);
        const at = new Date().toISOString();
        expect((await asAgent(`/v1/agent/jobs/${jobId}/logs`, { epoch: 1, seq: 0, stream: 'stdout', at, lines: [`plain line`, `colour \u001b[31mred\u001b[0m and ${hostile}`] })).status).toBe(200);
        expect((await asAgent(`/v1/agent/jobs/${jobId}/logs`, { epoch: 1, seq: 1, stream: 'stderr', at, lines: [`progress 10%\rprogress 20%\t${hostile}`] })).status).toBe(200);
        expect((await asAgent(`/v1/agent/jobs/${jobId}/progress`, { epoch: 1, message: `pulling ${hostile}` })).status).toBe(204);
        await until('the log lines', () => f.output().stdout.includes('plain line') && logsF.output().stdout.includes('plain line'));
        const finish = await asAgent(`/v1/agent/jobs/${jobId}/finish`, { epoch: 1, reason: 'error', exitCode: null, error: hostile });
        expect(finish.status, await finish.clone().text()).toBe(200);
        const [sub, waited, followed] = await Promise.all([f.done, waiter.done, logsF.done]);
        for (const [what, r, code] of [['submit --follow', sub, 1], ['wait', waited, 1], ['logs -f', followed, 0]] as const) {
          expect(r.code, what).toBe(code);
          expect(r.stderr, what).toMatch(new RegExp(`${jobId} failed: boom`));
          expectNoEscapes(`${what} stdout`, r.stdout);
          expectNoEscapes(`${what} stderr`, r.stderr);
        }
        // The job's colours are kept in its log, and so are its carriage returns and tabs.
        expect(sub.stdout).toContain('colour \x1b[31mred\x1b[0m and boom');
        expect(followed.stderr).toContain('progress 10%\rprogress 20%\tboom');

        const shown = await gantry(['job', jobId]);
        expect(shown.code).toBe(0);
        expect(shown.stdout).toMatch(/pulling boom/);
        expectNoEscapes('job', shown.stdout + shown.stderr);
        const logs = await gantry(['logs', jobId]);
        expect(logs.code).toBe(0);
        expectNoEscapes('logs', logs.stdout + logs.stderr);
        expect(logs.stdout).toContain('\x1b[31mred\x1b[0m');
        // --raw gives the log as the node sent it (less what the coordinator cleaned: NUL and the like).
        const raw = await gantry(['logs', jobId, '--raw']);
        expect(raw.code).toBe(0);
        expect(raw.stdout).toContain('\x1b]0;owned');
        expect(raw.stdout).toContain('\x1b[2J');
      } finally {
        for (const p of followers) p.child.kill();
      }
    });

    it('cannot reach the terminal through cancel --wait', async () => {
      const job = await h.client(client.key).post<Job>('/v1/jobs', { name: 'to-cancel', image: 'busybox', command: ['true'], resources: { cpu: 1, memoryMb: 1024, gpus: 1, gpu: { model: 'NoSuchGPU' } } });
      await running(job.id);
      const c = start(['cancel', '--wait', job.id], asClient);
      try {
        await until('the cancel asked', async () => (await h.client(client.key).get<Job>(`/v1/jobs/${job.id}`)).cancelRequestedAt);
        expect((await asAgent(`/v1/agent/jobs/${job.id}/finish`, { epoch: 1, reason: 'cancelled', exitCode: 137, error: hostile })).status).toBe(200);
        const r = await c.done;
        expect(r.code).toBe(0);
        expect(r.stdout).toMatch(new RegExp(`${job.id} cancelled with exit code 137.*: boom`));
        expectNoEscapes('cancel --wait', r.stdout + r.stderr);
      } finally {
        c.child.kill();
      }
    });

    it('cannot reach the terminal through archive names, nor fill the disk past the caps', async () => {
      const job = await h.client(client.key).post<Job>('/v1/jobs', { name: 'out-hostile', image: 'busybox', command: ['true'], resources: { cpu: 1, memoryMb: 64 } });
      await leaseTo(h, job.id, node.nodeId, 'running');
      // A gzip bomb (64 MiB of zeros in about 64 KiB) is not taken at all.
      const zeros = tar.pack();
      zeros.entry({ name: 'zeros.bin' }, Buffer.alloc(64 << 20));
      zeros.finalize();
      const zeroParts: Buffer[] = [];
      for await (const c of zeros) zeroParts.push(Buffer.from(c as Uint8Array));
      const bomb = gzipSync(Buffer.concat(zeroParts));
      const refused = await node.fetch(`/v1/agent/jobs/${job.id}/outputs?epoch=1`, { method: 'POST', body: new Uint8Array(bomb), headers: { 'content-type': 'application/x-tar' } });
      expect(refused.status).toBe(415);
      const none = await gantry(['outputs', job.id, '-o', join(home, 'no-outputs')]);
      expect(none.code).toBe(1);
      expect(none.stderr).toMatch(/not found/);
      const pack = tar.pack();
      pack.entry({ name: 'ok.txt' }, 'fine');
      pack.entry({ name: `\u001b]0;owned\u0007\u001b[2J/../../escape.txt` }, 'no');
      pack.entry({ name: `\u001b[31mlink\u001b[0m`, type: 'symlink', linkname: '/etc/passwd' });
      pack.entry({ name: 'big.bin' }, Buffer.alloc(3 << 20));
      pack.finalize();
      const parts: Buffer[] = [];
      for await (const c of pack) parts.push(Buffer.from(c as Uint8Array));
      const up = await node.fetch(`/v1/agent/jobs/${job.id}/outputs?epoch=1`, { method: 'POST', body: new Uint8Array(Buffer.concat(parts)), headers: { 'content-type': 'application/x-tar' } });
      expect(up.status).toBe(201);

      const dir = join(await mkdtemp(join(home, 'hostile-')), 'out');
      const r = await gantry(['outputs', job.id, '-o', dir]);
      expect(r.code).toBe(0);
      expect(r.stderr).toMatch(/left out .*escape\.txt/);
      expectNoEscapes('outputs', r.stdout + r.stderr);

      // Past a cap: one line, exit 1, and no more on disk than the cap allows.
      const capped = join(await mkdtemp(join(home, 'capped-')), 'out');
      const big = await gantry(['outputs', job.id, '-o', capped, '--max-size', '1M']);
      expect(big.code).toBe(1);
      expect(big.stderr).toBe(`gantry outputs: the outputs of ${job.id} hold more than 1M (--max-size): stopped after 1 file (4 bytes) in ${capped}\n`);
      await expect(stat(join(capped, 'big.bin'))).rejects.toThrow();
      const few = await gantry(['outputs', job.id, '-o', join(capped, 'few'), '--max-files', '1']);
      expect(few.code).toBe(1);
      expect(few.stderr).toBe(`gantry outputs: the outputs of ${job.id} hold more than 1 entries (--max-files): stopped after 1 file (4 bytes) in ${join(capped, 'few')}\n`);
    });
  });

  describe('help', () => {
    it('lists the commands and documents exit codes; each command has its own help', async () => {
      const top = await gantry(['--help']);
      expect(top.code).toBe(0);
      for (const cmd of ['submit', 'jobs', 'job', 'logs', 'cancel', 'outputs', 'pool', 'offers', 'nodes', 'tokens', 'usage', 'balance', 'ledger', 'login']) {
        expect(top.stdout).toMatch(new RegExp(`^  ${cmd}\\s`, 'm'));
      }
      expect(top.stdout).toMatch(/exit codes:\n\s+0\s+success\n\s+1\s+an error.*\n\s+2\s+a usage error/);
      const sub = await gantry(['submit', '--help']);
      expect(sub.code).toBe(0);
      expect(sub.stdout).toMatch(/^usage: gantry submit JOB_FILE/);
      expect(sub.stdout).toContain('--memory SIZE');
      const unknown = await gantry(['frob']);
      expect(unknown.code).toBe(2);
      expect(unknown.stderr).toBe('gantry: unknown command "frob" (see gantry --help)\n');
    });
  });
});
