import { api, session } from '../api.js';
import { barChart } from '../charts.js';
import { fill, h, row, table } from '../dom.js';
import { duration, money, time } from '../format.js';
import { card, every } from './common.js';

function sideView(title, side, testid) {
  return h(
    'section',
    { 'data-testid': testid },
    h('h2', {}, title),
    h('div', { class: 'cards' }, card('Total', money(side.total), `${testid}-total`), card('Jobs', String(side.jobs), `${testid}-jobs`)),
    barChart({ title: 'By day', bars: side.byDay.map((d) => ({ label: d.day, value: d.amount })), format: money, testid: `${testid}-days` }),
    table(
      ['Job', 'Node', 'Finished', 'Run time', 'GPU-hours', 'Amount'],
      side.byJob.map((j) =>
        row(
          j.name ? h('a', { href: `#/jobs/${j.jobId}` }, j.name) : h('span', { class: 'mono' }, j.jobId),
          h('span', { class: 'mono' }, j.nodeId ?? '—'),
          time(j.finishedAt),
          duration(j.usage?.seconds),
          j.usage ? (Object.values(j.usage.gpuSeconds).reduce((a, b) => a + b, 0) / 3600).toFixed(2) : '—',
          money(j.amount),
        ),
      ),
    ),
  );
}

/** The money now: a client's balance, held and available; a provider's earned, paid out and payable. */
function balanceView(b) {
  return h(
    'section',
    { 'data-testid': 'balance' },
    b.client
      ? h(
          'div',
          { class: 'cards' },
          card('Balance', money(b.client.balance), 'balance-balance'),
          card('Held by running leases', money(b.client.held), 'balance-held'),
          card('Available', money(b.client.available), 'balance-available'),
        )
      : null,
    b.provider
      ? h(
          'div',
          { class: 'cards' },
          card('Earned', money(b.provider.earned), 'balance-earned'),
          card('Paid out', money(b.provider.paidOut), 'balance-paid-out'),
          card('Payable', money(b.provider.payable), 'balance-payable'),
        )
      : null,
  );
}

export function usagePage(main) {
  const status = h('div', { class: 'status' });
  const body = h('div', {}, h('p', { class: 'muted' }, 'Loading…'));
  fill(main, h('h1', {}, 'Usage and cost'), h('p', { class: 'lede' }, 'The last 30 days, by day (UTC) and by job, at the prices in force when each job was leased.'), status, body);
  return every(
    15_000,
    async () => {
      const [u, b] = await Promise.all([api('/v1/usage'), api('/v1/balance')]);
      const roles = session.roles();
      fill(
        body,
        balanceView(b),
        u.spend ? sideView('Spend', u.spend, 'spend') : null,
        u.earnings ? sideView('Earnings', u.earnings, 'earnings') : null,
        !u.spend && !u.earnings && !roles.client && !roles.provider ? h('p', { class: 'muted' }, 'This key has neither a client nor a provider scope.') : null,
      );
    },
    status,
  );
}
