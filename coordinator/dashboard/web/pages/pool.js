import { api } from '../api.js';
import { lineChart } from '../charts.js';
import { fill, h, row, table } from '../dom.js';
import { duration, mib, money, pct } from '../format.js';
import { card, every } from './common.js';

const priceCell = (p) => (p ? `${money(p.min)} · ${money(p.median)} · ${money(p.max)}` : '—');

function poolView(p) {
  const gpus = { online: p.gpus.online + p.migDevices.online, free: p.gpus.free + p.migDevices.free, busy: p.gpus.busy + p.migDevices.busy };
  const cards = h(
    'div',
    { class: 'cards' },
    card('GPUs online', String(gpus.online), 'gpus-online', `${p.gpus.online} whole · ${p.migDevices.online} MIG`),
    card('Free', String(gpus.free), 'gpus-free', gpus.online ? `${pct((gpus.free / gpus.online) * 100)} of online` : null),
    card('Busy', String(gpus.busy), 'gpus-busy'),
    card('Nodes online', String(p.nodes.online), 'nodes-online', `${p.nodes.offline} offline · ${p.nodes.draining} draining`),
    card('CPU cores free', `${p.cpu.free} / ${p.cpu.cores}`, 'cpu-free', `${mib(p.memory.freeMb)} of ${mib(p.memory.totalMb)} memory free`),
    card('Queued jobs', String(p.queue.depth), 'queue-depth', p.queue.oldestWaitSeconds === null ? 'none waiting' : `oldest waited ${duration(p.queue.oldestWaitSeconds)}`),
    card('Last hour: done · failed', `${p.lastHour.succeeded} · ${p.lastHour.failed}`, 'last-hour', `${p.lastHour.started} started`),
  );
  const models = table(
    ['GPU model', 'Kind', 'Memory', 'Online', 'Free', 'Busy', 'Offline', 'Price / GPU-hour (low · median · high)', 'Utilization'],
    p.models.map((m) =>
      h(
        'tr',
        { 'data-testid': 'model-row' },
        h('td', { 'data-col': 'model' }, m.model),
        h('td', { 'data-col': 'kind' }, m.kind === 'mig' ? 'MIG device' : 'GPU'),
        h('td', { 'data-col': 'memory' }, mib(m.memoryMb)),
        h('td', { 'data-col': 'online', class: 'num' }, String(m.online)),
        h('td', { 'data-col': 'free', class: 'num' }, String(m.free)),
        h('td', { 'data-col': 'busy', class: 'num' }, String(m.busy)),
        h('td', { 'data-col': 'offline', class: 'num' }, String(m.offline)),
        h('td', { 'data-col': 'price' }, priceCell(m.pricePerGpuHour)),
        h('td', { 'data-col': 'util', class: 'num' }, pct(m.avgUtilizationPct)),
      ),
    ),
    { 'data-testid': 'models' },
  );
  const queue = table(
    ['Requested model', 'Jobs', 'GPUs', 'Oldest waiting'],
    p.queue.byModel.map((q) => row(q.model ?? 'any / none', String(q.jobs), String(q.gpus), duration((Date.parse(p.at) - Date.parse(q.oldestQueuedAt)) / 1000))),
  );
  const regions = table(
    ['Region', 'Nodes', 'GPUs online', 'Free', 'Busy', 'CPU cores free'],
    p.regions.map((r) => row(r.region ?? '(none)', `${r.nodesOnline} online · ${r.nodesOffline} offline`, String(r.gpusOnline), String(r.gpusFree), String(r.gpusBusy), `${r.cpuCoresFree} / ${r.cpuCores}`)),
  );
  return [cards, h('h2', {}, 'GPUs by model'), models, h('div', { class: 'two' }, h('section', {}, h('h2', {}, 'Queue'), queue), h('section', {}, h('h2', {}, 'Regions'), regions))];
}

function historyView(history) {
  const t = (p) => Date.parse(p.at);
  const byModel = new Map();
  for (const p of history.points) {
    for (const m of p.models) {
      const name = m.kind === 'mig' ? `${m.model} (MIG)` : m.model;
      if (!byModel.has(name)) byModel.set(name, []);
      byModel.get(name).push([t(p), m.free]);
    }
  }
  return h(
    'div',
    { class: 'charts' },
    lineChart({
      title: 'GPU utilization (busy share, live utilization)',
      yMax: 100,
      unit: '%',
      testid: 'chart-utilization',
      series: [
        { name: 'allocated', points: history.points.filter((p) => p.allocationPct !== null).map((p) => [t(p), p.allocationPct]) },
        { name: 'live utilization', points: history.points.filter((p) => p.avgUtilizationPct !== null).map((p) => [t(p), p.avgUtilizationPct]) },
      ],
    }),
    lineChart({ title: 'Free GPUs by model', testid: 'chart-free', series: [...byModel].map(([name, points]) => ({ name, points })) }),
    lineChart({ title: 'Queue depth', testid: 'chart-queue', series: [{ name: 'queued', points: history.points.map((p) => [t(p), p.queueDepth]) }] }),
  );
}

export function poolPage(main) {
  const status = h('div', { class: 'status' });
  const now = h('div', { 'data-testid': 'pool' }, h('p', { class: 'muted' }, 'Loading…'));
  const range = h(
    'select',
    { 'aria-label': 'Chart span', 'data-testid': 'span', on: { change: () => loadHistory() } },
    [['1h', 'last hour'], ['6h', 'last 6 hours'], ['24h', 'last day'], ['7d', 'last week']].map(([v, l]) => h('option', { value: v }, l)),
  );
  const charts = h('div', {}, h('p', { class: 'muted' }, 'Loading…'));
  const updated = h('span', { class: 'muted', 'data-testid': 'updated' });
  fill(
    main,
    h('div', { class: 'page-head' }, h('h1', {}, 'The pool'), updated),
    h('p', { class: 'lede' }, 'What anyone can lease right now, refreshed live. Prices are per GPU-hour among free GPUs.'),
    status,
    now,
    h('div', { class: 'page-head' }, h('h2', {}, 'Over time'), range),
    charts,
  );
  const loadHistory = async () => fill(charts, historyView(await api(`/v1/pool/history?since=${range.value}`)));
  const stopPool = every(5000, async () => {
    const p = await api('/v1/pool');
    fill(now, poolView(p));
    updated.textContent = `updated ${new Date(p.at).toLocaleTimeString()}`;
  }, status);
  const stopHistory = every(30_000, loadHistory, null);
  return () => {
    stopPool();
    stopHistory();
  };
}
