import { rolesOf, session } from '../api.js';
import { fill, h } from '../dom.js';
import { errorText } from './common.js';

export function signinPage(main, ctx) {
  const input = h('input', { id: 'key', name: 'key', type: 'password', autocomplete: 'off', required: true, placeholder: 'gk_…', 'data-testid': 'key' });
  const message = h('p', { class: 'error', role: 'alert', 'data-testid': 'signin-error' });
  const form = h(
    'form',
    {
      class: 'form narrow',
      on: {
        submit: async (e) => {
          e.preventDefault();
          message.textContent = '';
          const key = input.value.trim();
          try {
            const roles = await rolesOf(key);
            session.set(key, roles);
            ctx.navigate(roles.client ? '#/jobs' : roles.provider ? '#/nodes' : '#/usage');
          } catch (err) {
            message.textContent = err?.status === 401 ? 'That key is not valid or was revoked.' : errorText(err);
          }
        },
      },
    },
    h('label', { for: 'key' }, 'API key'),
    input,
    h('p', { class: 'hint' }, 'Kept in this tab only (session storage) and sent as an Authorization header; never put in a URL.'),
    h('button', { type: 'submit', class: 'primary', 'data-testid': 'signin' }, 'Sign in'),
    message,
  );
  fill(main, h('h1', {}, 'Sign in'), h('p', { class: 'lede' }, 'Clients see their jobs and submit new ones; providers see their nodes and add more.'), form);
  input.focus();
}
