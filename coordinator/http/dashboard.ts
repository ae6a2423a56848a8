import type { AppDeps } from '../deps.ts';
import { contentSecurityPolicy, dashboardAssets } from '../dashboard/bundle.ts';
import { createRouter } from './router.ts';

/** The web dashboard at `/`: its page, script, style and icon, under a strict CSP. */
export function dashboardRoutes(_deps: AppDeps) {
  const app = createRouter();
  for (const path of ['/', '/dashboard/app.js', '/dashboard/style.css', '/dashboard/icon.svg']) {
    app.get(path, async (c) => {
      const a = (await dashboardAssets())[path]!;
      const headers: Record<string, string> = {
        'content-type': a.contentType,
        etag: a.etag,
        'cache-control': 'no-cache',
        'content-security-policy': contentSecurityPolicy,
        'x-content-type-options': 'nosniff',
        'referrer-policy': 'no-referrer',
        'x-frame-options': 'DENY',
        'cross-origin-opener-policy': 'same-origin',
      };
      headers.vary = 'accept-encoding';
      if (c.req.header('if-none-match') === a.etag) return c.body(null, 304, headers);
      if (/\bgzip\b/.test(c.req.header('accept-encoding') ?? '')) {
        return c.body(new Uint8Array(a.gzip), 200, { ...headers, 'content-encoding': 'gzip' });
      }
      return c.body(a.body, 200, headers);
    });
  }
  return app;
}
