import { h, s } from './dom.js';

// Small inline SVG charts, drawn from numbers only (no library, nothing parsed as markup).

const W = 320;
const H = 120;
const pad = { l: 34, r: 8, t: 8, b: 20 };

function niceMax(v) {
  if (v <= 0) return 1;
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

/**
 * A line chart of one or more series over time.
 * series: [{ name, points: [[timeMs, value], ...] }]; yMax fixed (e.g. 100 for %) or from the data.
 */
export function lineChart({ title, series, yMax, unit = '', testid }) {
  const all = series.flatMap((x) => x.points);
  const xs = all.map((p) => p[0]);
  const x0 = Math.min(...xs);
  const x1 = Math.max(...xs);
  const top = yMax ?? niceMax(Math.max(0, ...all.map((p) => p[1])));
  const px = (t) => pad.l + (x1 === x0 ? (W - pad.l - pad.r) / 2 : ((t - x0) / (x1 - x0)) * (W - pad.l - pad.r));
  const py = (v) => pad.t + (1 - Math.min(v, top) / top) * (H - pad.t - pad.b);
  const svg = s('svg', { viewBox: `0 0 ${W} ${H}`, class: 'chart', role: 'img', 'aria-label': title });
  for (const frac of [0, 0.5, 1]) {
    const y = py(top * frac);
    svg.append(s('line', { x1: pad.l, x2: W - pad.r, y1: y, y2: y, class: 'grid' }));
    svg.append(s('text', { x: pad.l - 4, y: y + 3, class: 'axis', 'text-anchor': 'end' }, `${+(top * frac).toFixed(1)}${unit}`));
  }
  if (all.length) {
    for (const [i, t] of (x0 === x1 ? [x0] : [x0, x1]).entries()) {
      const label = new Date(t).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
      svg.append(s('text', { x: px(t), y: H - 5, class: 'axis', 'text-anchor': x0 === x1 ? 'middle' : i === 0 ? 'start' : 'end' }, label));
    }
  }
  series.forEach((x, i) => {
    if (!x.points.length) return;
    const d = x.points.map((p, j) => `${j ? 'L' : 'M'}${px(p[0]).toFixed(1)},${py(p[1]).toFixed(1)}`).join('');
    svg.append(s('path', { d, class: `line s${i % 6}` }));
    if (x.points.length === 1) svg.append(s('circle', { cx: px(x.points[0][0]), cy: py(x.points[0][1]), r: 2.5, class: `dot s${i % 6}` }));
  });
  const legend = series.length > 1 ? h('ul', { class: 'legend' }, series.map((x, i) => h('li', {}, h('span', { class: `swatch s${i % 6}` }), x.name))) : null;
  return h('figure', { class: 'chart-box', 'data-testid': testid }, h('figcaption', {}, title), all.length ? svg : h('p', { class: 'muted empty-chart' }, 'No data yet'), legend);
}

/** A sparkline of recent values with the latest one written beside it. */
export function sparkline(values, { max, label, unit = '', testid } = {}) {
  const w = 90;
  const ht = 24;
  const top = max ?? niceMax(Math.max(1, ...values));
  const svg = s('svg', { viewBox: `0 0 ${w} ${ht}`, class: 'spark', role: 'img', 'aria-label': label ?? 'trend' });
  if (values.length) {
    const step = values.length > 1 ? w / (values.length - 1) : 0;
    const d = values.map((v, i) => `${i ? 'L' : 'M'}${(i * step).toFixed(1)},${(ht - 1 - (Math.min(v, top) / top) * (ht - 2)).toFixed(1)}`).join('');
    svg.append(s('path', { d, class: 'line s0' }));
  }
  const last = values.length ? values[values.length - 1] : null;
  return h('span', { class: 'spark-cell', 'data-testid': testid }, svg, h('span', { class: 'spark-value' }, last === null ? '—' : `${last}${unit}`));
}

/** Horizontal bars, for amounts by day. */
export function barChart({ title, bars, format = String, testid }) {
  const top = niceMax(Math.max(0, ...bars.map((b) => b.value)));
  return h(
    'figure',
    { class: 'chart-box', 'data-testid': testid },
    h('figcaption', {}, title),
    bars.length
      ? h('ul', { class: 'bars' }, bars.map((b) => {
          const bar = h('span', { class: 'bar' });
          bar.style.width = `${top ? (b.value / top) * 100 : 0}%`;
          return h('li', {}, h('span', { class: 'bar-label' }, b.label), h('span', { class: 'bar-track' }, bar), h('span', { class: 'bar-value' }, format(b.value)));
        }))
      : h('p', { class: 'muted empty-chart' }, 'No data yet'),
  );
}
