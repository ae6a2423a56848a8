import { api } from '../api.js';
import { fill, h, table } from '../dom.js';
import { jobDuration, since } from '../format.js';
import { badge, every } from './common.js';

export function jobsPage(main) {
  const status = h('div', { class: 'status' });
  const list = h('div', {}, h('p', { class: 'muted' }, 'Loading…'));
  fill(main, h('div', { class: 'page-head' }, h('h1', {}, 'Your jobs'), h('a', { href: '#/submit', class: 'button primary' }, 'Submit a job')), status, list);
  return every(
    3000,
    async () => {
      const page = await api('/v1/jobs?limit=100');
      fill(
        list,
        table(
          ['Name', 'State', 'Node', 'GPUs', 'Duration', 'Submitted'],
          page.items.map((j) =>
            h(
              'tr',
              { 'data-testid': 'job-row', 'data-job-id': j.id },
              h('td', {}, h('a', { href: `#/jobs/${j.id}`, 'data-testid': 'job-link' }, j.name)),
              h(
                'td',
                {},
                badge(j.status),
                j.tasks ? h('div', { class: 'hint', 'data-testid': 'array-tasks' }, `${j.tasks.succeeded + j.tasks.failed + j.tasks.cancelled} of ${j.tasks.count} tasks ended`) : null,
                j.status === 'queued' && j.pendingReason ? h('div', { class: 'hint' }, j.pendingReason) : null,
              ),
              h('td', { class: 'mono' }, j.nodeId ?? '—'),
              h('td', { class: 'num' }, j.gpuIds ? String(j.gpuIds.length) : String(j.spec.resources.gpus ?? 0)),
              h('td', {}, jobDuration(j)),
              h('td', {}, since(j.createdAt)),
            ),
          ),
          { 'data-testid': 'jobs' },
        ),
      );
    },
    status,
  );
}
