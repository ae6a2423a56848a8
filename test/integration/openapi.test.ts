import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createApp } from '../../coordinator/app.ts';
import { dbSkipReason, startHarness, type Harness } from '../support/harness.ts';

type Doc = {
  openapi: string;
  info: { title: string; version: string };
  servers?: { url: string }[];
  paths: Record<string, Record<string, Operation>>;
  components?: { schemas?: Record<string, unknown>; securitySchemes?: Record<string, { type: string; scheme?: string }> };
};
type Operation = { summary?: string; security?: Record<string, string[]>[]; responses: Record<string, { description: string }>; parameters?: { name: string; in: string }[] };

const methods = ['get', 'put', 'post', 'delete', 'patch', 'head', 'options', 'trace'];

/** Every "$ref" in the document, with where it stands. */
function refs(node: unknown, at = '#', out: [string, string][] = []): [string, string][] {
  if (Array.isArray(node)) node.forEach((v, i) => refs(v, `${at}/${i}`, out));
  else if (node && typeof node === 'object') {
    for (const [k, v] of Object.entries(node)) {
      if (k === '$ref' && typeof v === 'string') out.push([at, v]);
      else refs(v, `${at}/${k}`, out);
    }
  }
  return out;
}

function resolve(doc: unknown, ref: string): unknown {
  if (!ref.startsWith('#/')) return undefined;
  return ref
    .slice(2)
    .split('/')
    .map((p) => p.replace(/~1/g, '/').replace(/~0/g, '~'))
    .reduce<unknown>((o, k) => (o && typeof o === 'object' ? (o as Record<string, unknown>)[k] : undefined), doc);
}

describe.skipIf(dbSkipReason)('GET /openapi.json', () => {
  let h: Harness;
  let doc: Doc;
  beforeAll(async () => {
    h = await startHarness();
    doc = await h.client().get<Doc>('/openapi.json');
  });
  afterAll(async () => h?.close());

  it('is an OpenAPI 3.1 document in shape', () => {
    expect(doc.openapi).toMatch(/^3\.1\.\d+$/);
    expect(doc.info.title).toBeTruthy();
    expect(doc.info.version).toBeTruthy();
    expect(Object.keys(doc.paths).length).toBeGreaterThan(5);
    const seen = new Set<string>();
    for (const [path, item] of Object.entries(doc.paths)) {
      expect(path, path).toMatch(/^\//);
      const templated = [...path.matchAll(/\{([^}]+)\}/g)].map((m) => m[1]);
      for (const [method, op] of Object.entries(item)) {
        if (!methods.includes(method)) continue;
        const where = `${method.toUpperCase()} ${path}`;
        expect(Object.keys(op.responses ?? {}).length, where).toBeGreaterThan(0);
        for (const [code, r] of Object.entries(op.responses)) {
          expect(code, where).toMatch(/^([1-5]\d\d|[1-5]XX|default)$/);
          expect(typeof r.description, `${where} ${code}`).toBe('string');
        }
        // Every path template has its parameter declared, in: path.
        const inPath = (op.parameters ?? []).filter((p) => p.in === 'path').map((p) => p.name);
        for (const name of templated) expect(inPath, `${where} declares {${name}}`).toContain(name);
        for (const s of op.security ?? []) for (const scheme of Object.keys(s)) expect(doc.components?.securitySchemes?.[scheme], where).toBeDefined();
        seen.add(where);
      }
    }
    expect(seen.size).toBeGreaterThan(10);
    for (const [at, ref] of refs(doc)) expect(resolve(doc, ref), `${at} → ${ref}`).toBeDefined();
  });

  it('declares the bearer scheme and uses it on the authenticated routes', () => {
    expect(doc.components?.securitySchemes?.bearerAuth).toEqual({ type: 'http', scheme: 'bearer' });
    for (const [path, method] of [
      ['/v1/jobs', 'post'],
      ['/v1/offers', 'get'],
      ['/v1/jobs/dry-run', 'post'],
      ['/v1/usage', 'get'],
    ] as const) {
      expect(doc.paths[path]?.[method]?.security, `${method} ${path}`).toEqual([{ bearerAuth: [] }]);
    }
    expect(doc.paths['/v1/pool']?.get?.security).toBeUndefined();
  });

  it('lists the main paths', () => {
    for (const path of [
      '/v1/jobs',
      '/v1/jobs/{id}',
      '/v1/jobs/{id}/cancel',
      '/v1/jobs/{id}/events',
      '/v1/jobs/dry-run',
      '/v1/pool',
      '/v1/pool/history',
      '/v1/offers',
      '/v1/usage',
      '/v1/accounts',
      '/healthz',
    ]) {
      expect(Object.keys(doc.paths)).toContain(path);
    }
  });

  it('documents every /v1 route the app serves', () => {
    const app = createApp(h.coordinator.deps);
    const documented = new Set(
      Object.entries(doc.paths).flatMap(([p, item]) => Object.keys(item).filter((m) => methods.includes(m)).map((m) => `${m.toUpperCase()} ${p}`)),
    );
    const served = app.routes
      .filter((r) => r.method !== 'ALL' && r.path.startsWith('/v1/'))
      .map((r) => `${r.method} ${r.path.replace(/:([A-Za-z0-9_]+)(\{[^}]*\})?/g, '{$1}')}`);
    const missing = [...new Set(served)].filter((r) => !documented.has(r));
    expect(missing).toEqual([]);
  });
});
