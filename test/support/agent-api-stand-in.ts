// A loopback HTTP server answering the agent's routes the way the coordinator does, for unit tests
// of the agent's loops (lease runner, heartbeat) without a database. Each test says how a route
// answers; every request is recorded in order. Leases are signed with a real Ed25519 key, as the
// coordinator signs them (coordinator/leases/tokens.ts), so the agent verifies them for real.
import { generateKeyPairSync, type KeyObject } from 'node:crypto';
import { createServer, type IncomingMessage, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { JWK } from 'jose';
import { leaseClaims, signLease } from '../../coordinator/leases/tokens.ts';
import { specDigest } from '../../shared/digest.ts';
import { newId } from '../../shared/ids.ts';
import { JobSpec } from '../../shared/jobs.ts';
import type { LeaseGrant } from '../../shared/leases.ts';

export interface Recorded {
  method: string;
  path: string;
  body: unknown;
  at: number;
}

export type Answer = { status: number; body?: unknown };
export type Route = (req: Recorded) => Answer | Promise<Answer>;

export interface SigningKeyPair {
  kid: string;
  privateKey: KeyObject;
  publicJwk: JWK;
}

export function newSigningKey(kid = `k-${newId('lease').slice(-8)}`): SigningKeyPair {
  const { privateKey, publicKey } = generateKeyPairSync('ed25519');
  return { kid, privateKey, publicJwk: { ...(publicKey.export({ format: 'jwk' }) as JWK), kid, alg: 'EdDSA', use: 'sig' } };
}

export interface StandIn {
  url: string;
  issuer: string;
  nodeId: string;
  key: SigningKeyPair;
  requests: Recorded[];
  /** What a route (like 'POST /v1/agent/jobs/:id/finish') answers; unset routes answer 200 {}. */
  on(route: string, answer: Route): void;
  /** Hands this lease out on the next work poll. */
  offer(grant: LeaseGrant): void;
  /** A lease for a job with this env (the test executor reads it), signed by `key` (default the stand-in's). */
  grant(env?: Record<string, string>, opts?: { key?: SigningKeyPair; ttlMs?: number; task?: { index: number; count: number } }): LeaseGrant;
  close(): Promise<void>;
}

const readBody = async (req: IncomingMessage) => {
  const chunks: Buffer[] = [];
  for await (const c of req) chunks.push(c as Buffer);
  const text = Buffer.concat(chunks).toString('utf8');
  return text ? JSON.parse(text) : undefined;
};

/** What the coordinator answers a finish report: the job as it left it. */
export const reportAnswer = (r: Recorded, status: string): Answer => ({
  status: 200,
  body: { jobId: /\/jobs\/(job_[A-Za-z0-9]+)/.exec(r.path)?.[1] ?? '', status, epoch: (r.body as { epoch: number }).epoch },
});

/** The route pattern a path matches: ids become ':id'. */
const pattern = (method: string, path: string) => `${method} ${path.split('?')[0]!.replace(/\/job_[A-Za-z0-9]+/g, '/:id')}`;

export async function startStandIn(): Promise<StandIn> {
  const issuer = 'gantry-stand-in';
  const nodeId = newId('node');
  const key = newSigningKey();
  const requests: Recorded[] = [];
  const routes = new Map<string, Route>();
  const offered: LeaseGrant[] = [];
  routes.set('GET /.well-known/jwks.json', () => ({ status: 200, body: { keys: [key.publicJwk] } }));
  routes.set('GET /v1/agent/work', async () => {
    // A short long-poll: leases offered meanwhile go out, else an empty answer.
    for (let i = 0; i < 10 && !offered.length; i++) await new Promise((r) => setTimeout(r, 20));
    return { status: 200, body: { leases: offered.splice(0) } };
  });
  // The agent's reports are answered with the job as the report left it (ReportAnswer).
  routes.set('POST /v1/agent/jobs/:id/running', (r) => reportAnswer(r, 'running'));
  routes.set('POST /v1/agent/jobs/:id/finish', (r) => reportAnswer(r, 'succeeded'));
  const server: Server = createServer(async (req, res) => {
    const recorded: Recorded = { method: req.method!, path: req.url!, body: await readBody(req), at: Date.now() };
    requests.push(recorded);
    const route = routes.get(pattern(recorded.method, recorded.path));
    const answer = route ? await route(recorded) : { status: 200, body: {} };
    const problem = answer.status >= 400;
    res.writeHead(answer.status, { 'content-type': problem ? 'application/problem+json' : 'application/json', date: new Date().toUTCString() });
    res.end(JSON.stringify(answer.body ?? (problem ? { type: 'about:blank', title: 'refused', status: answer.status, code: answer.status === 409 ? 'stale_lease' : 'unavailable' } : {})));
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  return {
    url,
    issuer,
    nodeId,
    key,
    requests,
    on: (route, answer) => void routes.set(route, answer),
    offer: (grant) => void offered.push(grant),
    grant(env = {}, opts = {}) {
      const spec = JobSpec.parse({ name: 'unit', image: 'busybox:latest', command: ['true'], env, resources: { cpu: 1, memoryMb: 128 } });
      const now = Date.now();
      const ttlMs = opts.ttlMs ?? 60_000;
      const jobId = newId('job');
      const leaseId = newId('lease');
      const claims = leaseClaims({
        issuer,
        nodeId,
        jobId,
        leaseId,
        epoch: 1,
        gpuIds: [],
        cpuMillis: 1000,
        memoryMb: 128,
        specDigest: specDigest(spec),
        task: opts.task ?? null,
        issuedAt: new Date(now),
        expiresAt: new Date(now + ttlMs),
      });
      return {
        jobId,
        leaseId,
        epoch: 1,
        token: signLease(opts.key ?? key, claims),
        spec,
        gpus: [],
        cpuMillis: 1000,
        memoryMb: 128,
        expiresAt: new Date(now + ttlMs).toISOString(),
        expiresInMs: ttlMs,
      };
    },
    close: () =>
      new Promise<void>((r) => {
        server.close(() => r());
        server.closeAllConnections();
      }),
  };
}
