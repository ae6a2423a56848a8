import { h } from '../dom.js';

/** Runs fn now and every ms until the page is left; errors show in `status`, never throw. */
export function every(ms, fn, status) {
  let stopped = false;
  let timer = null;
  const tick = async () => {
    try {
      await fn();
      if (status) status.replaceChildren();
    } catch (err) {
      if (status && !stopped) status.replaceChildren(h('p', { class: 'error' }, errorText(err)));
    }
    if (!stopped) timer = setTimeout(tick, ms);
  };
  tick();
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}

export function errorText(err) {
  if (err?.name === 'TypeError') return 'Cannot reach the coordinator.';
  return err?.message ?? String(err);
}

export const badge = (status) => h('span', { class: `badge st-${status}`, 'data-testid': 'status' }, status);

export function card(label, value, testid, sub) {
  return h('div', { class: 'card', 'data-testid': testid }, h('div', { class: 'card-label' }, label), h('div', { class: 'card-value' }, value), sub ? h('div', { class: 'card-sub' }, sub) : null);
}
