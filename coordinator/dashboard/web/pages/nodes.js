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


// A new point only when a new heartbeat came in, not on every refresh of the page.
const lastBeat = new Map();

function gpuTable(node) {
  const gpus = node.gpus ?? [];
  const fresh = lastBeat.get(node.id) !== node.lastHeartbeatAt;
  lastBeat.set(node.id, node.lastHeartbeatAt);
  const live = (g, name) => (fresh ? (g.metrics?.[name] ?? null) : null);
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
        h('td', {}, g.model, g.mig ? h('span', { class: 'tag' }, `MIG ${g.mig.gpuInstanceId}/${g.mig.computeInstanceId}`) : null),
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
  const free = (n.capacity.cpu - n.allocated.cpu).toFixed(3).replace(/\.?0+$/, '');
  return h(
    'section',
    { class: 'panel node', 'data-testid': 'node', 'data-node-id': n.id },
    h(
      'div',
      { class: 'page-head' },
      h('h2', { 'data-testid': 'node-name' }, n.name),
      h('span', {}, badge(n.status), n.draining ? h('span', { class: 'tag' }, 'draining') : null),
    ),
    h(
      'p',
      { class: 'muted' },
      h('span', { class: 'mono' }, n.id),
      n.region ? ` · ${n.region}` : '',
      ` · ${free} of ${n.capacity.cpu} cores free · ${mib(n.capacity.memoryMb - n.allocated.memoryMb)} of ${mib(n.capacity.memoryMb)} memory free`,
      ` · ${money(n.priceGpuHour)}/GPU-hour`,
      n.lastHeartbeatAt ? ` · heartbeat ${since(n.lastHeartbeatAt)}` : ' · no heartbeat yet',
    ),
    n.gpus.length ? gpuTable(n) : h('p', { class: 'muted' }, 'No GPUs: CPU jobs only.'),
  );
}

// The last hour of per-minute samples, once per node, so the sparklines start with history.
const seeded = new Set();
async function seedHistory(n) {
  if (seeded.has(n.id)) return;
  seeded.add(n.id);
  const series = await api(`/v1/nodes/${n.id}/metrics`);
  for (const item of series.items) {
    for (const g of item.sample.gpus ?? []) {
      const k = `${n.id}/${g.id}`;
      remember(`${k}/u`, g.utilizationPct);
      remember(`${k}/m`, g.memoryUsedMb);
      remember(`${k}/t`, g.temperatureC);
      remember(`${k}/p`, g.powerW);
    }
  }
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
          const token = t.token;
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
      const nodes = (await api('/v1/nodes?limit=200')).items;
      await Promise.all(nodes.map((n) => seedHistory(n).catch(() => seeded.delete(n.id))));
      fill(list, nodes.length ? nodes.map(nodeCard) : h('p', { class: 'muted', 'data-testid': 'no-nodes' }, 'No nodes yet. Add one to start earning.'));
    },
    status,
  );
}
