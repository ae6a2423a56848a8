import { api } from '../api.js';
import { sparkline } from '../charts.js';
import { fill, h, table } from '../dom.js';
import { mib, money, since } from '../format.js';
import { badge, errorText, every } from './common.js';

// Each GPU's live figures arrive with every refresh; the page keeps the last few minutes of
// them per GPU to draw as sparklines.
const keep = 60;
const series = new Map();

function remember(key, value) {
  if (!series.has(key)) series.set(key, []);
  const s = series.get(key);
  if (value !== null && value !== undefined) s.push(value);
  if (s.length > keep) s.splice(0, s.length - keep);
  return s;
}

const live = (g, name) => g[name] ?? g.metrics?.[name] ?? null;

function gpuTable(node) {
  const gpus = node.gpus ?? [];
  return table(
    ['#', 'GPU', 'Memory', 'Job', 'Utilization', 'Memory used', 'Temperature', 'Power'],
    gpus.map((g) => {
      const k = `${node.id}/${g.id}`;
      const util = remember(`${k}/u`, live(g, 'utilizationPct'));
      const mem = remember(`${k}/m`, live(g, 'memoryUsedMb'));
      const temp = remember(`${k}/t`, live(g, 'temperatureC'));
      const power = remember(`${k}/p`, live(g, 'powerW'));
      return h(
        'tr',
        { 'data-testid': 'gpu-row' },
        h('td', { class: 'num' }, String(g.index ?? '')),
        h('td', {}, g.model, g.mig ? h('span', { class: 'tag' }, 'MIG') : null),
        h('td', {}, mib(g.memoryMb)),
        h('td', { class: 'mono' }, g.jobId ?? 'free'),
        h('td', {}, sparkline(util, { max: 100, unit: '%', label: 'utilization', testid: 'gpu-util' })),
        h('td', {}, sparkline(mem, { max: g.memoryMb || undefined, unit: ' MiB', label: 'memory used' })),
        h('td', {}, sparkline(temp, { max: 100, unit: '°C', label: 'temperature' })),
        h('td', {}, sparkline(power, { unit: ' W', label: 'power' })),
      );
    }),
    { 'data-testid': 'gpus' },
  );
}

function nodeCard(n) {
  const cpu = n.cpuMillis !== undefined ? `${(n.cpuMillis - (n.allocatedCpuMillis ?? 0)) / 1000} of ${n.cpuMillis / 1000} cores free` : null;
  return h(
    'section',
    { class: 'panel node', 'data-testid': 'node', 'data-node-id': n.id },
    h(
      'div',
      { class: 'page-head' },
      h('h2', { 'data-testid': 'node-name' }, n.name ?? n.id),
      h('span', {}, badge(n.status), n.draining ? h('span', { class: 'tag' }, 'draining') : null),
    ),
    h(
      'p',
      { class: 'muted' },
      [h('span', { class: 'mono' }, n.id), n.region ? ` · ${n.region}` : '', cpu ? ` · ${cpu}` : '', n.memoryMb ? ` · ${mib(n.memoryMb)} memory` : '',
        n.pricePerGpuHour !== undefined ? ` · ${money(n.pricePerGpuHour)}/GPU-hour` : '', n.lastHeartbeatAt ? ` · heartbeat ${since(n.lastHeartbeatAt)}` : ''],
    ),
    (n.gpus ?? []).length ? gpuTable(n) : h('p', { class: 'muted' }, 'No GPUs: CPU jobs only.'),
  );
}

export function nodesPage(main) {
  const status = h('div', { class: 'status' });
  const list = h('div', {}, h('p', { class: 'muted' }, 'Loading…'));
  const join = h('div', { 'data-testid': 'join' });
  const add = h('button', {
    type: 'button',
    class: 'primary',
    'data-testid': 'add-node',
    on: {
      click: async () => {
        add.disabled = true;
        try {
          const t = await api('/v1/enrollment-tokens', { method: 'POST', body: {} });
          const token = t.token ?? t.key ?? t.secret;
          const command = `gantry-agent join --coordinator ${location.origin} --token ${token}`;
          const code = h('code', { 'data-testid': 'join-command' }, command);
          fill(
            join,
            h(
              'section',
              { class: 'panel' },
              h('h2', {}, 'Add a node'),
              h('p', {}, 'On the GPU machine, with Docker and the NVIDIA driver installed, run:'),
              h('pre', { class: 'command' }, code),
              h('div', { class: 'actions' }, h('button', {
                type: 'button',
                on: { click: async (e) => {
                  await navigator.clipboard?.writeText(command).catch(() => {});
                  e.target.textContent = 'Copied';
                } },
              }, 'Copy'), t.expiresAt ? h('span', { class: 'muted' }, `The token works until ${new Date(t.expiresAt).toLocaleString()} and is shown only now.`) : null),
            ),
          );
        } catch (err) {
          fill(join, h('p', { class: 'error' }, errorText(err)));
        } finally {
          add.disabled = false;
        }
      },
    },
  }, 'Add node');
  fill(main, h('div', { class: 'page-head' }, h('h1', {}, 'Your nodes'), add), join, status, list);
  return every(
    3000,
    async () => {
      const page = await api('/v1/nodes?limit=200');
      const nodes = page.items ?? page;
      fill(list, nodes.length ? nodes.map(nodeCard) : h('p', { class: 'muted', 'data-testid': 'no-nodes' }, 'No nodes yet. Add one to start earning.'));
    },
    status,
  );
}
