// The dashboard in real headless Chromium against the real coordinator: the pool page shows what
// the API says, a provider adds a node and sees its GPUs, a client submits a job through the form
// and watches it end with its logs, and a hostile job name stays text.
//
// The node is driven by a scripted agent speaking the agent protocol over HTTP (register with the
// token the dashboard showed, heartbeats, long-poll for work, running, log chunks, finish): the
// gantry-agent process cannot join yet (its join/run commands are placeholders).
import { mkdirSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { chromium, type Browser, type Page } from 'playwright-core';
import { ApiClient } from '../../shared/client.ts';
import type { Pool } from '../../shared/pool.ts';
import { chromiumArgs, chromiumPath, requireChromiumOrSkip } from '../support/chromium-env.ts';
import { startHarness, type Harness } from '../support/harness.ts';
import { a5000Machine, metricsFor, newAgentKey, signAgentToken } from '../support/agent-identity.ts';

const hasBrowser = await requireChromiumOrSkip();
const shots = 'test-results/dashboard';
const sizes = { laptop: { width: 1366, height: 860 }, phone: { width: 390, height: 844 } } as const;
const hostile = '<img src=x onerror=alert(1)>';

/** A page that records every console error, page error and dialog, so a test can say there were none. */
async function openPage(browser: Browser, size: keyof typeof sizes) {
  const context = await browser.newContext({ viewport: sizes[size] });
  const page = await context.newPage();
  const problems: string[] = [];
  page.on('console', (m) => {
    if (m.type() === 'error') problems.push(`console: ${m.text()}`);
  });
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  page.on('dialog', (d) => {
    problems.push(`dialog: ${d.message()}`);
    void d.dismiss();
  });
  return { page, problems, close: () => context.close() };
}

async function signIn(page: Page, url: string, key: string) {
  await page.goto(`${url}/#/signin`);
  await page.fill('[data-testid=key]', key);
  await page.click('[data-testid=signin]');
  await page.waitForSelector('[data-testid=signout]');
}

const shot = (page: Page, name: string, size: string) => page.screenshot({ path: `${shots}/${name}-${size}.png`, fullPage: true });

/** What a `gantry-agent join` does, then its loop: heartbeats and, for each lease, run → logs → finish. */
async function scriptedAgent(url: string, enrollmentToken: string) {
  const { publicJwk, privateKey } = await newAgentKey();
  const hardware = a5000Machine(String(Date.now() % 1_000_000));
  const registered = await new ApiClient({ baseUrl: url }).post<{ nodeId: string; coordinatorName: string }>('/v1/agent/register', {
    token: enrollmentToken,
    publicKey: publicJwk,
    name: 'rig-e2e',
    region: 'eu-west',
    priceGpuHour: 0.75,
    agentVersion: 'e2e-script',
    hardware,
  });
  const api = new ApiClient({
    baseUrl: url,
    token: () => signAgentToken(privateKey, { sub: registered.nodeId, aud: registered.coordinatorName }),
    timeoutMs: 45_000,
  });
  let beats = 0;
  let held: { jobId: string; epoch: number }[] = [];
  let stopped = false;
  const heartbeat = () => api.post('/v1/agent/heartbeat', { jobs: held, metrics: metricsFor(hardware, beats++), ...(beats === 1 ? { hardware } : {}) });
  await heartbeat();
  const beating = setInterval(() => void heartbeat().catch(() => {}), 1000);
  const working = (async () => {
    while (!stopped) {
      const work = await api.get<{ leases: { jobId: string; epoch: number; spec: { command: string[] } }[] }>('/v1/agent/work?wait=2').catch(() => ({ leases: [] }));
      for (const lease of work.leases) {
        const { jobId, epoch } = lease;
        held = [...held, { jobId, epoch }];
        await api.post(`/v1/agent/jobs/${jobId}/running`, { epoch });
        const lines = [`hello from ${lease.spec.command.join(' ')}`, 'step 1/2', 'step 2/2: done'];
        for (const [seq, line] of lines.entries()) {
          await api.post(`/v1/agent/jobs/${jobId}/logs`, { epoch, seq, stream: 'stdout', at: new Date().toISOString(), lines: [line] });
          await new Promise((r) => setTimeout(r, 300));
        }
        await api.post(`/v1/agent/jobs/${jobId}/finish`, { epoch, reason: 'succeeded', exitCode: 0, usage: { wallSeconds: 1 } });
        held = held.filter((j) => j.jobId !== jobId);
      }
    }
  })();
  return {
    nodeId: registered.nodeId,
    gpuCount: hardware.gpus.length,
    async stop() {
      stopped = true;
      clearInterval(beating);
      await working;
    },
  };
}

describe.skipIf(!hasBrowser)('dashboard in Chromium', () => {
  let h: Harness;
  let browser: Browser;
  let agent: Awaited<ReturnType<typeof scriptedAgent>> | null = null;
  let provider: Awaited<ReturnType<Harness['newAccount']>>;
  let client: Awaited<ReturnType<Harness['newAccount']>>;

  beforeAll(async () => {
    mkdirSync(shots, { recursive: true });
    h = await startHarness({ GANTRY_POOL_CACHE_MS: '0', GANTRY_POOL_HISTORY_STEP_SECONDS: '1' });
    provider = await h.newAccount('provider');
    client = await h.newAccount('client');
    browser = await chromium.launch({ executablePath: chromiumPath, args: [...chromiumArgs] });
  });
  afterAll(async () => {
    await agent?.stop();
    await browser?.close();
    await h?.close();
  });

  it('serves the page under a strict Content-Security-Policy', async () => {
    const res = await h.fetch('/');
    expect(res.status).toBe(200);
    const csp = res.headers.get('content-security-policy')!;
    expect(csp).toContain("default-src 'none'");
    expect(csp).toContain("script-src 'self'");
    expect(csp).not.toContain('unsafe-inline');
    expect(csp).not.toContain('unsafe-eval');
    expect((await h.fetch('/dashboard/app.js')).headers.get('content-type')).toMatch(/javascript/);
  });

  it('lets a provider add a node and see its GPUs', async () => {
    const { page, problems, close } = await openPage(browser, 'laptop');
    await signIn(page, h.url, provider.key);
    await page.waitForSelector('[data-testid=no-nodes]');
    await page.click('[data-testid=add-node]');
    const command = (await page.textContent('[data-testid=join-command]'))!;
    expect(command).toMatch(new RegExp(`^gantry-agent join --coordinator ${h.url.replace(/[.]/g, '\\.')} --token \\S+$`));
    await shot(page, 'add-node', 'laptop');
    await page.setViewportSize(sizes.phone);
    await shot(page, 'add-node', 'phone');
    await page.setViewportSize(sizes.laptop);
    agent = await scriptedAgent(h.url, command.split('--token ')[1]!);
    await page.waitForSelector('[data-testid=node] [data-testid=gpu-row]', { timeout: 15_000 });
    expect(await page.locator('[data-testid=node-name]').allTextContents()).toEqual(['rig-e2e']);
    expect(await page.locator('[data-testid=gpu-row]').count()).toBe(agent.gpuCount);
    // Live figures from the heartbeats reach the sparklines.
    await page.waitForFunction(() => [...document.querySelectorAll('[data-testid=gpu-util] .spark-value')].every((e) => /%$/.test(e.textContent ?? '')), null, { timeout: 15_000 });
    await shot(page, 'nodes', 'laptop');
    await page.setViewportSize(sizes.phone);
    await shot(page, 'nodes', 'phone');
    expect(problems).toEqual([]);
    await close();
  });

  it('shows the numbers GET /v1/pool returns, on a laptop and a phone', async () => {
    for (const size of ['laptop', 'phone'] as const) {
      const { page, problems, close } = await openPage(browser, size);
      await page.goto(`${h.url}/`);
      await page.waitForSelector('[data-testid=model-row]');
      const pool = await h.client().get<Pool>('/v1/pool');
      const rows = await page.locator('[data-testid=model-row]').evaluateAll((trs) =>
        trs.map((tr) => Object.fromEntries([...tr.querySelectorAll('td')].map((td) => [td.getAttribute('data-col'), td.textContent]))),
      );
      expect(rows.map((r) => [r.model, Number(r.online), Number(r.free), Number(r.busy), Number(r.offline)])).toEqual(
        pool.models.map((m) => [m.model, m.online, m.free, m.busy, m.offline]),
      );
      expect(rows[0]!.price).toBe('$0.75 · $0.75 · $0.75');
      expect(await page.textContent('[data-testid=gpus-online] .card-value')).toBe(String(pool.gpus.online + pool.migDevices.online));
      expect(await page.textContent('[data-testid=nodes-online] .card-value')).toBe(String(pool.nodes.online));
      await page.waitForSelector('[data-testid=chart-free] svg path.line', { state: 'attached' });
      await shot(page, 'pool', size);
      expect(problems).toEqual([]);
      await close();
    }
  });

  it('lets a client submit a job through the form and watch it succeed with its logs', async () => {
    const { page, problems, close } = await openPage(browser, 'laptop');
    await signIn(page, h.url, client.key);
    await page.goto(`${h.url}/#/submit`);
    // The shared schema refuses a bad spec before anything is sent.
    await page.fill('[data-testid=field-name]', 'e2e-echo');
    await page.fill('[data-testid=field-image]', 'Not An Image!');
    await page.click('[data-testid=submit]');
    expect(await page.textContent('[data-testid=error-image]')).toBe('not a container image reference');
    expect(await page.textContent('[data-testid=error-command]')).toMatch(/at least 1|>=1/);
    await shot(page, 'submit-errors', 'laptop');
    await page.setViewportSize(sizes.phone);
    await shot(page, 'submit-errors', 'phone');
    await page.setViewportSize(sizes.laptop);
    expect((await client.api.get<{ items: unknown[] }>('/v1/jobs')).items).toEqual([]);

    await page.fill('[data-testid=field-image]', 'busybox:latest');
    await page.fill('[data-testid=field-command]', 'echo\nhello');
    await page.fill('[data-testid=field-gpus]', '1');
    await page.fill('[data-testid=field-gpuModel]', 'A5000');
    await page.click('[data-testid=dry-run-button]');
    await page.waitForSelector('[data-testid=dry-run] h2');
    await shot(page, 'dry-run', 'laptop');
    expect(await page.textContent('[data-testid=dry-run] h2')).toBe('Fits: $0.75 per hour on the first offer');
    await page.click('[data-testid=submit]');
    await page.waitForURL(/#\/jobs\/job_/);
    await page.waitForFunction(() => document.querySelector('[data-testid=status]')?.textContent === 'succeeded', null, { timeout: 30_000 });
    await page.waitForFunction(() => /step 2\/2: done/.test(document.querySelector('[data-testid=logs]')?.textContent ?? ''), null, { timeout: 15_000 });
    expect(await page.textContent('[data-testid=logs]')).toBe('hello from echo hello\nstep 1/2\nstep 2/2: done\n');
    expect(await page.textContent('[data-testid=job-node]')).toBe(agent!.nodeId);
    expect(await page.textContent('[data-testid=exit-code]')).toBe('0');
    expect(await page.isVisible('[data-testid=cancel]')).toBe(false);
    const states = await page.locator('[data-testid=events] tbody tr td:nth-child(3)').allTextContents();
    expect(states).toEqual(['queued', 'leased', 'running', 'succeeded']);
    await page.waitForSelector('[data-testid=log-state]:has-text("ended: succeeded")');
    await shot(page, 'job', 'laptop');
    await page.setViewportSize(sizes.phone);
    await shot(page, 'job', 'phone');
    await page.goto(`${h.url}/#/jobs`);
    await page.waitForSelector('[data-testid=job-row]');
    await shot(page, 'jobs', 'phone');
    await page.setViewportSize(sizes.laptop);
    await shot(page, 'jobs', 'laptop');
    await page.goto(`${h.url}/#/usage`);
    await page.waitForSelector('[data-testid=spend-total]');
    // The client's money now: the harness deposited 1000, and its finished job cost something.
    const available = await page.textContent('[data-testid=balance-available]');
    expect(available).toMatch(/^Available\s*\$\d+\.\d{2}/);
    await shot(page, 'usage', 'laptop');
    await page.setViewportSize(sizes.phone);
    await shot(page, 'usage', 'phone');
    expect(problems).toEqual([]);
    await close();
  });

  it('shows a job named like markup as text: no element, no dialog, no console error', async () => {
    const job = await client.api.post<{ id: string }>('/v1/jobs', {
      name: hostile,
      image: 'busybox:latest',
      command: ['true'],
      // Nothing can take it: it stays queued, in the list and on its page.
      resources: { cpu: 1, memoryMb: 64, gpus: 1, gpu: { model: 'B200' } },
    });
    for (const size of ['laptop', 'phone'] as const) {
      const { page, problems, close } = await openPage(browser, size);
      await signIn(page, h.url, client.key);
      await page.goto(`${h.url}/#/jobs`);
      await page.waitForSelector(`[data-job-id="${job.id}"]`);
      expect(await page.textContent(`[data-job-id="${job.id}"] [data-testid=job-link]`)).toBe(hostile);
      await page.goto(`${h.url}/#/jobs/${job.id}`);
      await page.waitForFunction((name) => document.querySelector('[data-testid=job-name]')?.textContent === name, hostile);
      expect(await page.title()).toBe(`${hostile} · Gantry`);
      expect(await page.locator('img').count()).toBe(0);
      await shot(page, 'hostile-name', size);
      expect(problems).toEqual([]);
      await close();
    }
  });

  it("shows a job array's progress and links to its tasks, and a task links back to its array", async () => {
    const array = await client.api.post<{ id: string }>('/v1/jobs', { name: 'sweep', image: 'busybox:latest', command: ['true'], resources: { cpu: 1, memoryMb: 64 }, tasks: { count: 3, maxParallel: 2 } });
    const { page, problems, close } = await openPage(browser, 'laptop');
    await signIn(page, h.url, client.key);
    await page.goto(`${h.url}/#/jobs/${array.id}`);
    await page.waitForFunction(() => document.querySelector('[data-testid=status]')?.textContent === 'succeeded', null, { timeout: 30_000 });
    await page.waitForFunction(() => document.querySelectorAll('[data-testid=task-row]').length === 3);
    expect(await page.textContent('[data-testid=array-progress]')).toMatch(/3 of 3 ended · 3 succeeded · at most 2 at once/);
    expect(await page.isVisible('[data-testid=logs]')).toBe(false);
    await shot(page, 'array', 'laptop');
    await page.click('[data-testid=task-row]:first-child [data-testid=task-link]');
    await page.waitForSelector('[data-testid=array-link]');
    expect(await page.textContent('[data-testid=array-link]')).toBe('task 0 of the array');
    await page.click('[data-testid=array-link]');
    await page.waitForSelector('[data-testid=array-progress]');
    expect(page.url()).toContain(`#/jobs/${array.id}`);
    await page.goto(`${h.url}/#/jobs`);
    await page.waitForSelector(`[data-job-id="${array.id}"] [data-testid=array-tasks]`);
    expect(await page.textContent(`[data-job-id="${array.id}"] [data-testid=array-tasks]`)).toBe('3 of 3 tasks ended');
    expect(problems).toEqual([]);
    await close();
  });
});
