// The API key lives in this tab's session storage only: never in a URL, never in a cookie.
const keyName = 'gantry.apiKey';
const rolesName = 'gantry.roles';

export const session = {
  key: () => sessionStorage.getItem(keyName),
  roles: () => JSON.parse(sessionStorage.getItem(rolesName) ?? '{"client":false,"provider":false}'),
  set(key, roles) {
    sessionStorage.setItem(keyName, key);
    sessionStorage.setItem(rolesName, JSON.stringify(roles));
  },
  clear() {
    sessionStorage.removeItem(keyName);
    sessionStorage.removeItem(rolesName);
  },
};

export class ApiError extends Error {
  constructor(status, problem) {
    super(problem?.detail ?? problem?.title ?? `HTTP ${status}`);
    this.status = status;
    this.problem = problem;
  }
}

function headers(extra = {}, key = session.key()) {
  const h = { accept: 'application/json', ...extra };
  if (key) h.authorization = `Bearer ${key}`;
  return h;
}

/** JSON in, JSON out; a problem+json answer becomes an ApiError. */
export async function api(path, { method = 'GET', body, key, signal } = {}) {
  const res = await fetch(path, {
    method,
    headers: headers(body === undefined ? {} : { 'content-type': 'application/json' }, key ?? session.key()),
    body: body === undefined ? undefined : JSON.stringify(body),
    signal,
  });
  const text = await res.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!res.ok) {
    if (res.status === 401 && session.key() && !key) {
      session.clear();
      window.dispatchEvent(new Event('gantry:signedout'));
    }
    throw new ApiError(res.status, data);
  }
  return data;
}

/** A download that needs the Authorization header: fetched, then handed to the browser as a file. */
export async function download(path, filename) {
  const res = await fetch(path, { headers: headers({ accept: '*/*' }) });
  if (!res.ok) {
    let problem = null;
    try {
      problem = await res.json();
    } catch {}
    throw new ApiError(res.status, problem);
  }
  const url = URL.createObjectURL(await res.blob());
  const a = document.createElement('a');
  a.href = url;
  a.download = filename;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}

/**
 * Reads a server-sent event stream with fetch (so the key travels in the Authorization header,
 * which EventSource cannot send). Calls onEvent({event, id, data}) for each event; resolves when
 * the stream ends. Last-Event-ID resumes after a dropped connection.
 */
export async function readEvents(path, { onEvent, signal, lastEventId }) {
  const extra = { accept: 'text/event-stream' };
  if (lastEventId !== undefined && lastEventId !== null) extra['last-event-id'] = String(lastEventId);
  const res = await fetch(path, { headers: headers(extra), signal });
  if (!res.ok || !res.body) {
    let problem = null;
    try {
      problem = await res.json();
    } catch {}
    throw new ApiError(res.status, problem);
  }
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = '';
  let ev = { event: 'message', id: null, data: [] };
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value;
    let nl;
    while ((nl = buffer.indexOf('\n')) >= 0) {
      const line = buffer.slice(0, nl).replace(/\r$/, '');
      buffer = buffer.slice(nl + 1);
      if (line === '') {
        if (ev.data.length) onEvent({ event: ev.event, id: ev.id, data: ev.data.join('\n') });
        ev = { event: 'message', id: null, data: [] };
        continue;
      }
      if (line.startsWith(':')) continue;
      const colon = line.indexOf(':');
      const field = colon < 0 ? line : line.slice(0, colon);
      const val = colon < 0 ? '' : line.slice(colon + 1).replace(/^ /, '');
      if (field === 'event') ev.event = val;
      else if (field === 'data') ev.data.push(val);
      else if (field === 'id') ev.id = val;
    }
  }
}

/** Learns what a key may do from GET /v1/usage: each side is null where the key lacks the scope. */
export async function rolesOf(key) {
  const u = await api('/v1/usage?limit=1', { key });
  return { client: u.spend !== null, provider: u.earnings !== null };
}
