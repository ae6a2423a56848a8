import { z } from 'zod';
import { h, fill } from './dom.js';
import { session } from './api.js';
import { poolPage } from './pages/pool.js';
import { signinPage } from './pages/signin.js';
import { jobsPage } from './pages/jobs.js';
import { jobPage } from './pages/job.js';
import { submitPage } from './pages/submit.js';
import { nodesPage } from './pages/nodes.js';
import { usagePage } from './pages/usage.js';

// zod compiles fast paths with new Function unless told not to; the CSP allows no eval.
z.config({ jitless: true });

const routes = [
  { pattern: /^#?\/?$/, page: poolPage, title: 'Pool' },
  { pattern: /^#\/signin$/, page: signinPage, title: 'Sign in' },
  { pattern: /^#\/jobs$/, page: jobsPage, title: 'Jobs', role: 'client' },
  { pattern: /^#\/jobs\/(job_[0-9a-z]{22})$/, page: jobPage, title: 'Job', role: 'client' },
  { pattern: /^#\/submit$/, page: submitPage, title: 'Submit a job', role: 'client' },
  { pattern: /^#\/nodes$/, page: nodesPage, title: 'Nodes', role: 'provider' },
  { pattern: /^#\/usage$/, page: usagePage, title: 'Usage', role: 'any' },
];

let cleanup = null;

function nav() {
  const roles = session.roles();
  const signedIn = Boolean(session.key());
  const here = location.hash || '#/';
  const link = (href, text, testid) =>
    h('a', { href, 'data-testid': testid, ...(here === href || (href !== '#/' && here.startsWith(href)) ? { 'aria-current': 'page' } : {}) }, text);
  const items = [link('#/', 'Pool', 'nav-pool')];
  if (signedIn && roles.client) items.push(link('#/jobs', 'Jobs', 'nav-jobs'), link('#/submit', 'Submit', 'nav-submit'));
  if (signedIn && roles.provider) items.push(link('#/nodes', 'Nodes', 'nav-nodes'));
  if (signedIn) items.push(link('#/usage', 'Usage', 'nav-usage'));
  items.push(
    signedIn
      ? h('button', { type: 'button', class: 'link', 'data-testid': 'signout', on: { click: signOut } }, 'Sign out')
      : link('#/signin', 'Sign in', 'nav-signin'),
  );
  fill(document.getElementById('nav'), items);
}

function signOut() {
  session.clear();
  location.hash = '#/';
  render();
}

function render() {
  if (cleanup) cleanup();
  cleanup = null;
  nav();
  const main = document.getElementById('main');
  const hash = location.hash;
  const route = routes.find((r) => r.pattern.test(hash));
  if (!route) {
    document.title = 'Not found · Gantry';
    fill(main, h('h1', {}, 'Not found'), h('p', {}, h('a', { href: '#/' }, 'Back to the pool')));
    return;
  }
  const roles = session.roles();
  if (route.role && !session.key()) {
    location.hash = '#/signin';
    return;
  }
  if (route.role && route.role !== 'any' && !roles[route.role]) {
    fill(main, h('h1', {}, route.title), h('p', { class: 'notice' }, `This key has no ${route.role} scope.`));
    return;
  }
  document.title = `${route.title} · Gantry`;
  const params = hash.match(route.pattern).slice(1);
  fill(main);
  const ctx = { params, navigate: (to) => (location.hash = to), refreshNav: nav };
  try {
    cleanup = route.page(main, ctx) ?? null;
  } catch (err) {
    fill(main, h('p', { class: 'error' }, String(err?.message ?? err)));
  }
}

window.addEventListener('hashchange', render);
window.addEventListener('gantry:signedout', () => {
  location.hash = '#/signin';
  render();
});
render();
