import { api, download, readEvents } from '../api.js';
import { fill, h, row, table } from '../dom.js';
import { jobDuration, mib, money, time } from '../format.js';
import { badge, errorText, every } from './common.js';

const terminal = ['succeeded', 'failed', 'cancelled'];
const taskStates = ['succeeded', 'failed', 'cancelled', 'running', 'leased', 'queued'];

/** A job array's progress: a bar of its ended tasks, and its counts by state. */
function progress(t) {
  const ended = t.succeeded + t.failed + t.cancelled;
  return h(
    'div',
    { 'data-testid': 'array-progress' },
    h('progress', { max: String(t.count), value: String(ended), 'aria-label': `${ended} of ${t.count} tasks ended` }),
    ` ${ended} of ${t.count} ended · `,
    taskStates.filter((s) => t[s] > 0).map((s) => `${t[s]} ${s}`).join(' · '),
    ` · at most ${t.maxParallel} at once`,
  );
}

function details(j, rate) {
  const r = j.spec.resources;
  const gpu = r.gpus ? `${r.gpus} × ${r.gpu?.model ?? 'any GPU'}${r.gpu?.minMemoryMb ? ` (≥ ${mib(r.gpu.minMemoryMb)})` : ''}` : 'none';
  const dl = [
    ['State', badge(j.status)],
    ...(j.tasks ? [['Tasks', progress(j.tasks)]] : []),
    ...(j.parentId ? [['Array', h('a', { href: `#/jobs/${j.parentId}`, 'data-testid': 'array-link' }, `task ${j.taskIndex} of the array`)]] : []),
    ['Image', h('code', {}, j.spec.image)],
    ['Command', h('code', {}, [...(j.spec.entrypoint ?? []), ...j.spec.command].join(' '))],
    ['Resources', `${r.cpu} CPU · ${mib(r.memoryMb)} memory · GPUs: ${gpu}`],
    ['Max price', j.spec.maxPricePerHour === undefined ? 'no limit' : `${money(j.spec.maxPricePerHour)} / hour`],
    ['Node', h('span', { class: 'mono', 'data-testid': 'job-node' }, j.nodeId ?? '—')],
    ['GPUs held', j.gpuIds?.length ? h('span', { class: 'mono' }, j.gpuIds.join(', ')) : '—'],
    ['Attempts', j.tasks ? '—' : `${j.attempts} of ${j.maxAttempts}`],
    ['Duration', jobDuration(j)],
    ['Submitted', time(j.createdAt)],
    ['Finished', time(j.finishedAt)],
    ['Exit code', j.exitCode === null ? '—' : h('span', { 'data-testid': 'exit-code' }, String(j.exitCode))],
  ];
  if (j.service) {
    const state = j.service.state === 'ready' ? `ready since ${time(j.service.readyAt)}` : j.service.state;
    dl.push(['Service', h('span', { 'data-testid': 'service-state' }, state)]);
    dl.push(['Requests', h('span', { 'data-testid': 'service-rate' }, `${j.service.requests}${rate === null ? '' : ` · ${rate.toFixed(rate < 10 ? 1 : 0)} / s over the last minute`}`)]);
    // The service's own origin: a link, never loaded into this page (it is another site).
    dl.push(['Service URL', h('a', { href: j.serviceUrl, rel: 'noopener noreferrer', target: '_blank', class: 'mono', 'data-testid': 'service-url' }, j.serviceUrl)]);
  }
  if (j.pendingReason) dl.push(['Waiting because', j.pendingReason]);
  if (j.error) dl.push(['Error', h('span', { class: 'error' }, j.error)]);
  return h('dl', { class: 'details' }, dl.flatMap(([k, v]) => [h('dt', {}, k), h('dd', {}, v)]));
}

export function jobPage(main, ctx) {
  const [id] = ctx.params;
  const title = h('h1', { 'data-testid': 'job-name' }, '…');
  const status = h('div', { class: 'status' });
  const info = h('div', {});
  const events = h('div', {});
  const logs = h('pre', { class: 'logs', 'data-testid': 'logs', tabindex: '0', 'aria-label': 'Job logs' });
  const logState = h('span', { class: 'muted', 'data-testid': 'log-state' }, 'connecting…');
  const outputs = h('div', { 'data-testid': 'outputs' });
  // An array's tasks (each with its own page, logs and outputs) instead of logs of its own.
  const tasks = h('div', { 'data-testid': 'tasks' });
  const more = h('button', { type: 'button', hidden: true, 'data-testid': 'more-tasks', on: { click: () => loadTasks(false) } }, 'More tasks');
  const tasksSection = h('section', { hidden: true }, h('h2', {}, 'Tasks'), tasks, more);
  const logsSection = h('section', {}, h('div', { class: 'page-head' }, h('h2', {}, 'Logs'), logState), logs);
  const cancel = h('button', { type: 'button', class: 'danger', hidden: true, 'data-testid': 'cancel', on: { click: onCancel } }, 'Cancel job');
  fill(
    main,
    h('p', {}, h('a', { href: '#/jobs' }, '← Your jobs')),
    h('div', { class: 'page-head' }, title, cancel),
    status,
    info,
    tasksSection,
    logsSection,
    h('h2', {}, 'Outputs'),
    outputs,
    h('h2', {}, 'Events'),
    events,
  );

  let job = null;
  let taskRows = [];
  let cursor = null;
  async function loadTasks(fromStart) {
    const page = await api(`/v1/jobs/${id}/tasks?limit=100${!fromStart && cursor ? `&cursor=${cursor}` : ''}`);
    const rows = page.items.map((t) =>
      h(
        'tr',
        { 'data-testid': 'task-row' },
        h('td', { class: 'num' }, String(t.taskIndex)),
        h('td', {}, h('a', { href: `#/jobs/${t.id}`, 'data-testid': 'task-link' }, t.id)),
        h('td', {}, badge(t.status)),
        h('td', { class: 'mono' }, t.nodeId ?? '—'),
        h('td', {}, jobDuration(t)),
        h('td', { class: 'num' }, t.exitCode === null ? '—' : String(t.exitCode)),
      ),
    );
    taskRows = fromStart ? rows : [...taskRows, ...rows];
    cursor = page.nextCursor;
    more.hidden = !cursor;
    fill(tasks, table(['Index', 'Task', 'State', 'Node', 'Duration', 'Exit'], taskRows, { 'data-testid': 'task-table' }));
  }

  // The service's request count as polled, for its rate over the last minute (counts are stored every few seconds).
  const samples = [];
  function serviceRate(j) {
    if (!j.service) return null;
    const now = Date.now();
    samples.push([now, j.service.requests]);
    while (samples.length && samples[0][0] < now - 60_000) samples.shift();
    const [t0, n0] = samples[0];
    return now - t0 >= 10_000 ? ((j.service.requests - n0) * 1000) / (now - t0) : null;
  }
  async function onCancel() {
    cancel.disabled = true;
    try {
      job = await api(`/v1/jobs/${id}/cancel`, { method: 'POST', body: {} });
      show();
    } catch (err) {
      status.replaceChildren(h('p', { class: 'error' }, errorText(err)));
    } finally {
      cancel.disabled = false;
    }
  }

  function show() {
    title.textContent = job.name;
    document.title = `${job.name} · Gantry`;
    fill(info, details(job, serviceRate(job)));
    tasksSection.hidden = !job.tasks;
    logsSection.hidden = Boolean(job.tasks);
    cancel.hidden = terminal.includes(job.status) || Boolean(job.cancelRequestedAt);
  }

  async function showOutputs() {
    if (!terminal.includes(job.status)) return fill(outputs, h('p', { class: 'muted' }, 'Available when the job ends.'));
    fill(
      outputs,
      h('button', {
        type: 'button',
        'data-testid': 'download-outputs',
        on: {
          click: async () => {
            try {
              await download(`/v1/jobs/${id}/outputs`, `${id}-outputs.tar`);
            } catch (err) {
              fill(outputs, h('p', { class: err?.status === 404 ? 'muted' : 'error' }, err?.status === 404 ? 'This job left no outputs.' : errorText(err)));
            }
          },
        },
      }, 'Download outputs (.tar)'),
    );
  }

  const stopJob = every(
    2000,
    async () => {
      const [j, ev] = await Promise.all([api(`/v1/jobs/${id}`), api(`/v1/jobs/${id}/events`)]);
      const changed = !job || job.status !== j.status;
      job = j;
      show();
      fill(events, table(['When', 'From', 'To', 'Why'], ev.items.map((e) => row(time(e.at), e.from ?? '—', e.to, e.reason)), { 'data-testid': 'events' }));
      if (changed) showOutputs();
      // The first page of an array's tasks follows it; pages read further stay as read.
      if (j.tasks && taskRows.length <= 100) await loadTasks(true);
      if (terminal.includes(j.status)) stopJob?.();
    },
    status,
  );

  // Live logs: SSE read with fetch, resumed from the last seq if the connection drops.
  const abort = new AbortController();
  let lastId = null;
  (async () => {
    for (let tries = 0; !abort.signal.aborted && tries < 30; tries++) {
      try {
        logState.textContent = 'live';
        let ended = false;
        await readEvents(`/v1/jobs/${id}/logs?follow=1`, {
          signal: abort.signal,
          lastEventId: lastId,
          onEvent: (e) => {
            if (e.id !== null) lastId = e.id;
            if (e.event === 'log') {
              const batch = JSON.parse(e.data);
              const atBottom = logs.scrollTop + logs.clientHeight >= logs.scrollHeight - 4;
              logs.append(batch.stream === 'stderr' ? h('span', { class: 'stderr' }, batch.text) : batch.stream === 'system' ? h('span', { class: 'system' }, batch.text) : document.createTextNode(batch.text));
              if (atBottom) logs.scrollTop = logs.scrollHeight;
            } else if (e.event === 'end') {
              const end = JSON.parse(e.data);
              // max-life, lagging, shutdown: the stream ends, the job goes on; resume from the last id.
              if (['max-life', 'lagging', 'shutdown'].includes(end.reason)) return;
              ended = true;
              if (end.reason === 'revoked' || end.reason === 'expired') logState.textContent = `stopped: the API key was ${end.reason}`;
              else logState.textContent = `ended: ${end.status}${end.exitCode === null ? '' : ` (exit ${end.exitCode})`}`;
            }
          },
        });
        if (ended) return;
        // The stream ended but the job goes on (its longest life, a restart): resume shortly.
        tries = -1;
      } catch (err) {
        if (abort.signal.aborted) return;
        logState.textContent = `reconnecting… (${errorText(err)})`;
      }
      await new Promise((r) => setTimeout(r, 1000 + tries * 500));
    }
  })();

  return () => {
    stopJob();
    abort.abort();
  };
}
