// A service job end to end: the coordinator on a loopback port, the agent as its own process,
// busybox httpd in a container (CGI scripts make the header-echo and streaming endpoints), every
// request through the coordinator's front door and the agent's tunnel. The front door's finer
// rules (cookies, upgrades, revocation) are tested in-process in test/integration/services.test.ts.
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ApiClient } from '../../shared/client.ts';
import type { Job } from '../../shared/jobs.ts';
import type { CreatedServiceToken } from '../../shared/services.ts';
import { spawnAgent, startLocalCoordinator, type AgentProcess, type LocalCoordinator } from '../support/agent-process.ts';
import { startCli } from '../support/cli-process.ts';
import { dockerTestImage, requireDockerOrSkip } from '../support/docker-env.ts';
import { serviceFetch, serviceRequest } from '../support/service-client.ts';
import { until } from '../support/until.ts';

const docker = await requireDockerOrSkip();

/** The job: httpd on port 8000 with /ok.html and CGI scripts under /cgi-bin. */
const httpdScript = `
mkdir -p /tmp/www/cgi-bin
echo ok > /tmp/www/ok.html
cat > /tmp/www/cgi-bin/headers <<'EOF'
#!/bin/sh
printf 'Content-Type: text/plain\\r\\n\\r\\n'
env
EOF
cat > /tmp/www/cgi-bin/events <<'EOF'
#!/bin/sh
printf 'Content-Type: text/event-stream\\r\\n\\r\\n'
printf 'data: first\\n\\n'
while [ ! -f /tmp/go ]; do sleep 0.2; done
printf 'data: last\\n\\n'
EOF
cat > /tmp/www/cgi-bin/release <<'EOF'
#!/bin/sh
touch /tmp/go
printf 'Content-Type: text/plain\\r\\n\\r\\nreleased\\n'
EOF
cat > /tmp/www/cgi-bin/big <<'EOF'
#!/bin/sh
printf 'Content-Type: application/octet-stream\\r\\n\\r\\n'
yes xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx | head -c 16000000
EOF
cat > /tmp/www/cgi-bin/upload <<'EOF'
#!/bin/sh
printf 'Content-Type: text/plain\\r\\n\\r\\n'
wc -c
EOF
chmod +x /tmp/www/cgi-bin/*
exec httpd -f -p 8000 -h /tmp/www
`;

describe.skipIf(!docker)('a service job through the coordinator, with a real agent and Docker', () => {
  let c: LocalCoordinator;
  let work: string;
  let owner: ApiClient;
  let ownerKey: string;
  let strangerKey: string;
  let agent: AgentProcess;
  let stateDir: string;
  let job: Job;
  const auth = (key: string) => ({ authorization: `Bearer ${key}` });
  const spec = (over: Record<string, unknown> = {}) => ({
    name: 'httpd',
    image: dockerTestImage,
    command: ['sh', '-c', httpdScript],
    resources: { cpu: 0.5, memoryMb: 64 },
    timeoutSeconds: 600,
    service: { port: 8000, readinessPath: '/ok.html' },
    ...over,
  });

  beforeAll(async () => {
    c = await startLocalCoordinator('pglite', { GANTRY_SERVICE_BODY_LIMIT_BYTES: String(64 * 1024), GANTRY_NODE_TTL_SECONDS: '30' });
    work = await mkdtemp(path.join(tmpdir(), 'gantry-services-e2e-'));
    const newKey = async (name: string, kind: string, scopes: string[]) => {
      const account = await c.admin.post<{ id: string }>('/v1/accounts', { name, kind });
      return (await c.admin.post<{ key: string }>(`/v1/accounts/${account.id}/keys`, { scopes })).key;
    };
    ownerKey = await newKey('owner', 'client', ['client']);
    strangerKey = await newKey('stranger', 'client', ['client']);
    owner = new ApiClient({ baseUrl: c.url, token: ownerKey });
    const provider = new ApiClient({ baseUrl: c.url, token: await newKey('provider', 'provider', ['provider']) });
    const { token } = await provider.post<{ token: string }>('/v1/enrollment-tokens', {});
    stateDir = path.join(work, 'node');
    agent = spawnAgent(['join', '--coordinator', c.url, '--token', token, '--state-dir', stateDir, '--name', 'svc', '--run', '--heartbeat-seconds', '1'], {
      GANTRY_AGENT_STATE_DIR: '',
      GANTRY_AGENT_STOP_GRACE_SECONDS: '1',
    });
    await agent.waitForLine(/service tunnel open/, 60_000);
  });
  afterAll(async () => {
    if (job) await owner.post(`/v1/jobs/${job.id}/cancel`, {}).catch(() => {});
    await agent?.kill('SIGTERM');
    await c?.close();
    if (work) await rm(work, { recursive: true, force: true });
  });

  it('gantry submit prints the job id, then its URL once it is ready', async () => {
    const file = path.join(work, 'httpd.json');
    await writeFile(file, JSON.stringify(spec()));
    const run = await startCli(['submit', file], { GANTRY_URL: c.url, GANTRY_API_KEY: ownerKey, HOME: work }).done;
    expect(run.code, run.stderr).toBe(0);
    const [id, url] = run.stdout.trim().split('\n');
    job = await owner.get<Job>(`/v1/jobs/${id}`);
    expect(url).toBe(job.serviceUrl);
    expect(job.service?.state).toBe('ready');
    expect((await serviceFetch(`${url}/ok.html`, { headers: auth(ownerKey) })).body).toBe('ok\n');
  });

  it('answers 503 with Retry-After while a service is not ready', async () => {
    const waiting = await owner.post<Job>('/v1/jobs', spec({ name: 'never-ready', service: { port: 8000, readinessPath: '/never.html' } }));
    try {
      await until('the job runs', async () => (await owner.get<Job>(`/v1/jobs/${waiting.id}`)).status === 'running', 60_000);
      const res = await serviceFetch(`${waiting.serviceUrl}/ok.html`, { headers: auth(ownerKey) });
      expect(res.status).toBe(503);
      expect(res.headers['retry-after']).toBe('5');
      expect((await owner.get<Job>(`/v1/jobs/${waiting.id}`)).service).toEqual({ state: 'starting', readyAt: null, requests: 0 });
    } finally {
      await owner.post(`/v1/jobs/${waiting.id}/cancel`, {});
    }
  });

  it('lets the owner and a token holder in (the job never sees either credential), 401 without, 404 for another tenant', async () => {
    const url = `${job.serviceUrl}/cgi-bin/headers`;
    expect((await serviceFetch(url)).status).toBe(401);
    expect((await serviceFetch(url, { headers: auth(strangerKey) })).status).toBe(404);
    const asOwner = await serviceFetch(url, { headers: { ...auth(ownerKey), 'x-app': 'one', cookie: 'app=1; gantry_service_token=gst_x' } });
    expect(asOwner.status).toBe(200);
    // What the job saw of the request, as its environment.
    expect(asOwner.body).toContain('HTTP_X_APP=one');
    expect(asOwner.body).toContain('HTTP_COOKIE=app=1\n');
    expect(asOwner.body).not.toContain('HTTP_AUTHORIZATION');
    expect(asOwner.body).not.toContain(ownerKey);
    const { token } = await owner.post<CreatedServiceToken>(`/v1/jobs/${job.id}/service-tokens`, { name: 'app' });
    const asHolder = await serviceFetch(url, { headers: auth(token) });
    expect(asHolder.status).toBe(200);
    expect(asHolder.body).not.toContain(token);
    expect(asHolder.body).not.toContain('HTTP_AUTHORIZATION');
  });

  it("streams the job's events as it writes them: the first arrives before the last is written", async () => {
    let text = '';
    const ended = new Promise<void>((resolve, reject) => {
      const req = serviceRequest(`${job.serviceUrl}/cgi-bin/events`, { headers: auth(ownerKey) });
      req.on('response', (res) => {
        expect(res.headers['content-type']).toBe('text/event-stream');
        res.on('data', (chunk: Buffer) => (text += chunk.toString()));
        res.on('end', resolve);
      });
      req.on('error', reject);
      req.end();
    });
    await until('the first event', () => text.includes('data: first'), 20_000);
    expect(text).not.toContain('last');
    expect((await serviceFetch(`${job.serviceUrl}/cgi-bin/release`, { headers: auth(ownerKey) })).body).toBe('released\n');
    await ended;
    expect(text).toBe('data: first\n\ndata: last\n\n');
  });

  it('refuses a body over the limit with 413 and passes one under it', async () => {
    const small = await serviceFetch(`${job.serviceUrl}/cgi-bin/upload`, { method: 'POST', headers: { ...auth(ownerKey), 'content-type': 'application/octet-stream' }, body: Buffer.alloc(1000) });
    expect(small.body.trim()).toBe('1000');
    const big = await serviceFetch(`${job.serviceUrl}/cgi-bin/upload`, { method: 'POST', headers: auth(ownerKey), body: Buffer.alloc(100 * 1024) });
    expect(big.status).toBe(413);
  });

  it('serves 200 concurrent requests while one reader is stalled', async () => {
    const stalled = serviceRequest(`${job.serviceUrl}/cgi-bin/big`, { headers: auth(ownerKey) });
    stalled.on('error', () => {});
    await new Promise<void>((r) => stalled.on('response', (res) => (res.pause(), r())).end());
    const answers = await Promise.all(Array.from({ length: 200 }, () => serviceFetch(`${job.serviceUrl}/ok.html`, { headers: auth(ownerKey) })));
    expect(answers.map((a) => a.status).filter((s) => s !== 200)).toEqual([]);
    stalled.destroy();
  });

  it('comes back after an agent restart without a new lease, and is gone once cancelled', async () => {
    const before = await owner.get<Job>(`/v1/jobs/${job.id}`);
    await agent.kill('SIGKILL');
    await until('the tunnel is gone', () => !c.coordinator.deps.services.tunnels.session(before.nodeId!), 10_000);
    const away = await serviceFetch(`${job.serviceUrl}/ok.html`, { headers: auth(ownerKey) });
    expect(away.status).toBe(503);
    agent = spawnAgent(['run', '--state-dir', stateDir, '--heartbeat-seconds', '1'], { GANTRY_AGENT_STATE_DIR: '', GANTRY_AGENT_STOP_GRACE_SECONDS: '1' });
    await agent.waitForLine(/service tunnel open/, 60_000);
    await until('the service answers again', async () => (await serviceFetch(`${job.serviceUrl}/ok.html`, { headers: auth(ownerKey) })).status === 200, 30_000);
    const after = await owner.get<Job>(`/v1/jobs/${job.id}`);
    expect({ epoch: after.leaseEpoch, attempts: after.attempts, status: after.status }).toEqual({ epoch: before.leaseEpoch, attempts: before.attempts, status: 'running' });

    await owner.post(`/v1/jobs/${job.id}/cancel`, {});
    await until('the job is cancelled', async () => (await owner.get<Job>(`/v1/jobs/${job.id}`)).status === 'cancelled', 30_000);
    await until('the service is gone', async () => (await serviceFetch(`${job.serviceUrl}/ok.html`, { headers: auth(ownerKey) })).status === 410, 5_000);
    const ended = await owner.get<Job>(`/v1/jobs/${job.id}`);
    expect(ended.service?.state).toBe('stopped');
    expect(ended.cost).toBeGreaterThanOrEqual(0);
  });
});
