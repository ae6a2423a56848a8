export const money = (v) => (v === null || v === undefined ? '—' : `$${Number(v).toFixed(2)}`);
export const pct = (v) => (v === null || v === undefined ? '—' : `${Math.round(v)}%`);

export function mib(mb) {
  if (mb === null || mb === undefined) return '—';
  if (mb >= 1024 * 1024) return `${(mb / 1024 / 1024).toFixed(1)} TiB`;
  if (mb >= 1024) return `${(mb / 1024).toFixed(mb % 1024 === 0 ? 0 : 1)} GiB`;
  return `${mb} MiB`;
}

export function duration(seconds) {
  if (seconds === null || seconds === undefined || Number.isNaN(seconds)) return '—';
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
  return `${Math.floor(s / 86400)}d ${Math.floor((s % 86400) / 3600)}h`;
}

export function since(iso, now = Date.now()) {
  if (!iso) return '—';
  return `${duration((now - Date.parse(iso)) / 1000)} ago`;
}

export const time = (iso) => (iso ? new Date(iso).toLocaleString() : '—');
export const clock = (iso) => (iso ? new Date(iso).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' }) : '');

/** A job's run time: start to end, or to now while it runs. */
export function jobDuration(job, now = Date.now()) {
  const start = job.startedAt ?? job.leasedAt;
  if (!start) return '—';
  const end = job.finishedAt ? Date.parse(job.finishedAt) : now;
  return duration((end - Date.parse(start)) / 1000);
}
