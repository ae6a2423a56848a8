import { formatAmount, toMicros } from '../../shared/money.ts';
import { Balance, Ledger, type LedgerLine } from '../../shared/ledger.ts';
import { type Command, str } from '../command.ts';
import { UsageError } from '../errors.ts';
import { type Column, printable, table } from '../output.ts';

/** Amounts as the API gives them (decimals of currency units). */
const money = (n: number) => formatAmount(toMicros(n));

export const balance: Command = {
  name: 'balance',
  summary: "Your credit (as a client) and what you are owed (as a provider).",
  usage: ['balance [--json]'],
  description: 'A client: balance, what running leases hold, and what is available for new ones. A provider: earned (net of the platform fee), paid out, payable.',
  flags: { json: { type: 'boolean', help: 'print the answer as JSON' } },
  positionals: { min: 0, max: 0 },
  async run(ctx, { values }) {
    const { api } = await ctx.connect();
    const b = await api.get('/v1/balance', Balance);
    if (values.json) {
      ctx.stdout.write(`${JSON.stringify(b, null, 2)}\n`);
      return;
    }
    if (b.client) {
      const c = b.client;
      ctx.stdout.write(`balance    ${ctx.out.paint('bold', money(c.balance))}\nheld       ${money(c.held)}\navailable  ${money(c.available)}\n`);
      if (c.creditLimit) ctx.stdout.write(`limit      ${money(c.creditLimit)} below zero\n`);
    }
    if (b.client && b.provider) ctx.stdout.write('\n');
    if (b.provider) {
      const p = b.provider;
      ctx.stdout.write(`earned     ${money(p.earned)}\npaid out   ${money(p.paidOut)}\npayable    ${ctx.out.paint('bold', money(p.payable))}\n`);
    }
    if (!b.client && !b.provider) ctx.stdout.write('Nothing to show for this key.\n');
  },
};

const timePattern = /^\d{4}-\d{2}-\d{2}(T[\d:.]+(Z|[+-]\d{2}:\d{2})?)?$/;

export const ledger: Command = {
  name: 'ledger',
  summary: "Your account's ledger lines: deposits, holds, usage, fees, payouts, adjustments.",
  usage: ['ledger [--since TIME] [--until TIME] [--limit N] [--json]'],
  description: 'Each line names its job, lease and node. A hold (pending) is posted or voided when its lease bills or ends. Times are UTC.',
  flags: {
    since: { type: 'string', arg: 'TIME', help: 'from this day or ISO time (default: 30 days back)' },
    until: { type: 'string', arg: 'TIME', help: 'before this day or ISO time (default: now)' },
    limit: { type: 'string', arg: 'N', help: 'at most this many lines (default 200)' },
    json: { type: 'boolean', help: 'print the answer as JSON' },
  },
  positionals: { min: 0, max: 0 },
  async run(ctx, { values }) {
    const q = new URLSearchParams();
    for (const name of ['since', 'until'] as const) {
      const v = str(values, name);
      if (v === undefined) continue;
      if (!timePattern.test(v)) throw new UsageError(`--${name}: "${v}" is not a day like 2026-11-01 or an ISO time`, 'ledger');
      q.set(name, v);
    }
    const limit = str(values, 'limit');
    if (limit !== undefined) {
      if (!/^\d{1,4}$/.test(limit) || Number(limit) < 1 || Number(limit) > 1000) throw new UsageError(`--limit: "${limit}" is not a number from 1 to 1000`, 'ledger');
      q.set('limit', limit);
    }
    const { api } = await ctx.connect();
    const l = await api.get(`/v1/ledger${q.size ? `?${q}` : ''}`, Ledger);
    if (values.json) {
      ctx.stdout.write(`${JSON.stringify(l, null, 2)}\n`);
      return;
    }
    if (!l.items.length) {
      ctx.stdout.write(`No lines from ${l.since} to ${l.until}.\n`);
      return;
    }
    const cols: Column<LedgerLine>[] = [
      { header: 'TIME', value: (x) => x.at.replace('T', ' ').replace(/\.\d+Z$/, 'Z') },
      { header: 'SIDE', value: (x) => x.role },
      { header: 'WHAT', value: (x) => (x.kind === 'posted' ? x.code : `${x.code} ${x.kind}`) },
      { header: 'AMOUNT', value: (x) => money(x.amount), right: true },
      { header: 'JOB', value: (x) => x.jobId ?? '-' },
      { header: 'NODE', value: (x) => x.nodeId ?? '-' },
      { header: 'REFERENCE', value: (x) => printable(x.reference ?? '-'), flex: true },
    ];
    ctx.stdout.write(table(cols, l.items, { painter: ctx.out, width: ctx.stdoutIsTerminal ? ctx.stdout.columns : undefined }));
  },
};
