import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import { gzipSync } from 'node:zlib';
import { build, type Plugin } from 'esbuild';

// The dashboard is plain ES modules (web/) that import the shared zod schemas from shared/, so the
// submit form validates exactly as the API does. esbuild bundles them once per process, on the
// first request for the dashboard: no build step for the user, no cost for a coordinator no one
// opens in a browser.

const here = (p: string) => fileURLToPath(new URL(p, import.meta.url));

export interface Asset {
  body: string;
  /** The same bytes gzipped, for a browser that accepts it. */
  gzip: Buffer;
  contentType: string;
  etag: string;
}

const etagOf = (body: string) => `"${createHash('sha256').update(body).digest('base64url').slice(0, 22)}"`;
const asset = (body: string, contentType: string): Asset => ({ body, gzip: gzipSync(body), contentType, etag: etagOf(body) });

// zod's namespace object carries every locale (about 250 kB); the dashboard speaks English.
const englishOnly: Plugin = {
  name: 'zod-english-only',
  setup(b) {
    b.onResolve({ filter: /\/locales\/index\.js$/ }, (args) =>
      args.importer.includes(`${'node_modules'}/zod/`) ? { path: args.importer, namespace: 'zod-locales' } : undefined,
    );
    b.onLoad({ filter: /.*/, namespace: 'zod-locales' }, (args) => ({
      contents: `export { default as en } from ${JSON.stringify(new URL('../locales/en.js', `file://${args.path}`).pathname)};`,
      loader: 'js',
      resolveDir: '/',
    }));
  },
};

async function bundleApp(): Promise<Asset> {
  const result = await build({
    entryPoints: [here('./web/main.js')],
    bundle: true,
    format: 'esm',
    platform: 'browser',
    target: ['chrome120', 'firefox120', 'safari17'],
    minify: true,
    sourcemap: false,
    write: false,
    legalComments: 'none',
    logLevel: 'silent',
    plugins: [englishOnly],
  });
  return asset(result.outputFiles[0]!.text, 'text/javascript; charset=utf-8');
}

let assets: Promise<Record<string, Asset>> | null = null;

/** The dashboard's files by URL path, built on first use and kept for the process's life. */
export function dashboardAssets(): Promise<Record<string, Asset>> {
  assets ??= (async () => {
    const [app, css, html, icon] = await Promise.all([
      bundleApp(),
      readFile(here('./web/style.css'), 'utf8'),
      readFile(here('./web/index.html'), 'utf8'),
      readFile(here('./web/icon.svg'), 'utf8'),
    ]);
    return {
      '/': asset(html, 'text/html; charset=utf-8'),
      '/dashboard/app.js': app,
      '/dashboard/style.css': asset(css, 'text/css; charset=utf-8'),
      '/dashboard/icon.svg': asset(icon, 'image/svg+xml'),
    };
  })().catch((err) => {
    assets = null;
    throw err;
  });
  return assets;
}

/**
 * Scripts, styles and images only from this origin, no inline script or style, no eval, no
 * framing, and fetch only back to the API: whatever a job or node name holds cannot run.
 */
export const contentSecurityPolicy = [
  "default-src 'none'",
  "script-src 'self'",
  "style-src 'self'",
  "img-src 'self' data:",
  "connect-src 'self'",
  "manifest-src 'self'",
  "base-uri 'none'",
  "form-action 'self'",
  "frame-ancestors 'none'",
].join('; ');
