import { JobSpec } from '../../../../shared/jobs.ts';
import { fieldErrors } from '../../../../shared/errors.ts';
import { api } from '../api.js';
import { fill, h, row, table } from '../dom.js';
import { money } from '../format.js';
import { errorText } from './common.js';

// The form builds a job spec and checks it with JobSpec, the very schema POST /v1/jobs validates
// with; the API's own field errors (problem+json) land on the same fields.

const fields = [
  { id: 'name', label: 'Name', path: 'name', required: true, placeholder: 'train-resnet' },
  { id: 'image', label: 'Image', path: 'image', required: true, placeholder: 'pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime' },
  { id: 'command', label: 'Command (one argument per line)', path: 'command', kind: 'textarea', required: true, placeholder: 'python\ntrain.py' },
  { id: 'cpu', label: 'CPU cores', path: 'resources.cpu', type: 'number', step: 'any', value: '1' },
  { id: 'memoryMb', label: 'Memory (MiB)', path: 'resources.memoryMb', type: 'number', value: '1024' },
  { id: 'gpus', label: 'GPUs', path: 'resources.gpus', type: 'number', value: '0' },
  { id: 'gpuModel', label: 'GPU model (e.g. H100)', path: 'resources.gpu.model' },
  { id: 'gpuMinMemoryMb', label: 'Min GPU memory (MiB)', path: 'resources.gpu.minMemoryMb', type: 'number' },
  { id: 'maxPricePerHour', label: 'Max price per hour', path: 'maxPricePerHour', type: 'number', step: 'any' },
  { id: 'region', label: 'Region', path: 'constraints.region' },
  { id: 'timeoutSeconds', label: 'Timeout (seconds)', path: 'timeoutSeconds', type: 'number', value: '3600' },
  { id: 'env', label: 'Environment (NAME=value per line)', path: 'env', kind: 'textarea' },
];

const num = (v) => (v.trim() === '' ? undefined : Number(v));
const str = (v) => (v.trim() === '' ? undefined : v.trim());

function specFrom(values) {
  const gpu = { model: str(values.gpuModel), minMemoryMb: num(values.gpuMinMemoryMb) };
  const env = {};
  for (const line of values.env.split('\n')) {
    if (!line.trim()) continue;
    const eq = line.indexOf('=');
    env[eq < 0 ? line.trim() : line.slice(0, eq).trim()] = eq < 0 ? '' : line.slice(eq + 1);
  }
  const spec = {
    name: values.name.trim(),
    image: values.image.trim(),
    command: values.command.split('\n').filter((l) => l.length > 0),
    resources: {
      cpu: num(values.cpu),
      memoryMb: num(values.memoryMb),
      gpus: num(values.gpus) ?? 0,
      ...(gpu.model !== undefined || gpu.minMemoryMb !== undefined ? { gpu: Object.fromEntries(Object.entries(gpu).filter(([, v]) => v !== undefined)) } : {}),
    },
    ...(num(values.maxPricePerHour) !== undefined ? { maxPricePerHour: num(values.maxPricePerHour) } : {}),
    ...(str(values.region) ? { constraints: { region: str(values.region) } } : {}),
    ...(num(values.timeoutSeconds) !== undefined ? { timeoutSeconds: num(values.timeoutSeconds) } : {}),
    ...(Object.keys(env).length ? { env } : {}),
  };
  return spec;
}

export function submitPage(main, ctx) {
  const inputs = {};
  const errors = {};
  const formError = h('p', { class: 'error', role: 'alert', 'data-testid': 'form-error' });
  const result = h('div', { 'data-testid': 'dry-run' });
  const controls = fields.map((f) => {
    const attrs = { id: f.id, name: f.id, 'data-testid': `field-${f.id}`, placeholder: f.placeholder, required: f.required, 'aria-describedby': `${f.id}-error` };
    const input = f.kind === 'textarea' ? h('textarea', { ...attrs, rows: 3 }) : h('input', { ...attrs, type: f.type ?? 'text', step: f.step, value: f.value });
    if (f.kind === 'textarea' && f.value) input.value = f.value;
    inputs[f.id] = input;
    errors[f.path] = h('span', { class: 'field-error', id: `${f.id}-error`, 'data-testid': `error-${f.id}` });
    return h('div', { class: 'field' }, h('label', { for: f.id }, f.label), input, errors[f.path]);
  });

  function clearErrors() {
    formError.textContent = '';
    for (const el of Object.values(errors)) el.textContent = '';
    for (const el of Object.values(inputs)) el.removeAttribute('aria-invalid');
  }

  /** Puts each error on its field (or its nearest parent field), the rest under the form. */
  function showErrors(list) {
    const rest = [];
    for (const e of list) {
      let path = e.path;
      while (path && !errors[path]) path = path.includes('.') ? path.slice(0, path.lastIndexOf('.')) : '';
      const target = errors[path] ?? (e.path.startsWith('command') ? errors.command : null);
      if (target) {
        target.textContent = target.textContent ? `${target.textContent}; ${e.message}` : e.message;
        const f = fields.find((x) => x.path === path);
        if (f) inputs[f.id].setAttribute('aria-invalid', 'true');
      } else rest.push(`${e.path || '(spec)'}: ${e.message}`);
    }
    if (rest.length) formError.textContent = rest.join('; ');
  }

  function validated() {
    clearErrors();
    const values = Object.fromEntries(Object.entries(inputs).map(([k, el]) => [k, el.value]));
    const parsed = JobSpec.safeParse(specFrom(values));
    if (!parsed.success) {
      showErrors(fieldErrors(parsed.error.issues));
      return null;
    }
    return specFrom(values);
  }

  async function send(path) {
    const spec = validated();
    if (!spec) return null;
    try {
      return await api(path, { method: 'POST', body: spec });
    } catch (err) {
      if (err?.problem?.errors) showErrors(err.problem.errors);
      else formError.textContent = errorText(err);
      return null;
    }
  }

  const form = h(
    'form',
    {
      class: 'form',
      novalidate: true,
      'data-testid': 'submit-form',
      on: {
        submit: async (e) => {
          e.preventDefault();
          const job = await send('/v1/jobs');
          if (job) ctx.navigate(`#/jobs/${job.id}`);
        },
      },
    },
    h('div', { class: 'grid' }, controls),
    formError,
    h(
      'div',
      { class: 'actions' },
      h('button', { type: 'submit', class: 'primary', 'data-testid': 'submit' }, 'Submit job'),
      h('button', {
        type: 'button',
        'data-testid': 'dry-run-button',
        on: {
          click: async () => {
            const run = await send('/v1/jobs/dry-run');
            if (run) fill(result, dryRunView(run));
          },
        },
      }, 'Dry run'),
    ),
  );
  fill(main, h('h1', {}, 'Submit a job'), h('p', { class: 'lede' }, 'Checked here with the same schema the API uses. A dry run shows where it would run and what it would cost, without queuing it.'), form, result);
}

function dryRunView(run) {
  return h(
    'section',
    { class: 'panel' },
    h('h2', {}, run.fits ? `Fits: ${money(run.estimatedCostPerHour)} per hour on the first offer` : 'No node can take it now'),
    run.offers.length
      ? table(['Node', 'Region', 'GPU', 'Free', 'Price / hour'], run.offers.map((o) => row(h('span', { class: 'mono' }, o.nodeId), o.region ?? '—', o.gpu ? o.gpu.model : 'CPU only', o.gpu ? String(o.gpu.free) : `${o.cpuFree} cores`, money(o.pricePerHour))))
      : null,
    run.ruledOut.length ? h('ul', { class: 'ruled-out' }, run.ruledOut.map((r) => h('li', {}, h('strong', {}, r.constraint), ': ', r.detail))) : null,
  );
}
