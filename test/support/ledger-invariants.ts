// The money invariants, checked against the tables (the randomized test after every step): over
// all ledger accounts both the posted and the pending balances sum to zero; no client or provider
// is below its limit; the stored balances equal a replay of the transfers; every hold is resolved
// at most once and posts no more than it held; a live lease's hold is open, and no open hold
// belongs to anything but a live lease.
import { expect } from 'vitest';
import { sql } from 'drizzle-orm';
import type { Database } from '../../coordinator/db/open.ts';
import { toNumber } from '../../coordinator/db/open.ts';

type Acct = { id: string; role: string; dp: unknown; dP: unknown; cp: unknown; cP: unknown; lim: unknown };
type Tr = { id: string; d: string; c: string; a: unknown; kind: string; pid: string | null; at: string };
type LiveHold = { id: string; status: string; hold_id: string | null; hold_micros: unknown };

/**
 * Checks every money invariant. Replays only the transfers made since its last call (by their
 * time, which the randomized test's clock only moves forward, one writer at a time).
 */
export class LedgerChecker {
  private replay = new Map<string, { dp: number; dP: number; cp: number; cP: number }>();
  private seen = new Map<string, Tr>();
  private resolved = new Map<string, string>();
  private open = new Set<string>();
  private lastAt: string | null = null;

  async check(database: Database): Promise<void> {
    const since = this.lastAt;
    const { accounts, transfers, holds } = await database.db.transaction(
      async (tx) => {
        const rows = async <T>(q: ReturnType<typeof sql>) => {
          const r = (await tx.execute(q)) as unknown as T[] | { rows: T[] };
          return Array.isArray(r) ? [...r] : r.rows;
        };
        return {
          accounts: await rows<Acct>(sql`select id, role, debits_pending as dp, debits_posted as "dP", credits_pending as cp, credits_posted as "cP", credit_limit as lim from ledger_accounts`),
          transfers: await rows<Tr>(
            sql`select id, debit_account_id as d, credit_account_id as c, amount as a, kind, pending_id as pid, created_at::text as at
                from ledger_transfers ${since ? sql`where created_at >= ${since}::timestamptz` : sql``} order by created_at, id`,
          ),
          holds: await rows<LiveHold>(sql`select id, status, hold_id, hold_micros from jobs where hold_id is not null or status in ('leased', 'running')`),
        };
      },
      { isolationLevel: 'repeatable read', accessMode: 'read only' },
    );
    const n = toNumber;
    let posted = 0;
    let pending = 0;
    const stored = new Map(accounts.map((a) => [a.id, { dp: n(a.dp), dP: n(a.dP), cp: n(a.cp), cP: n(a.cP), lim: n(a.lim), role: a.role }]));
    for (const [id, a] of stored) {
      posted += a.cP - a.dP;
      pending += a.cp - a.dp;
      if (a.role === 'client' || a.role === 'provider') {
        expect(a.dP + a.dp, `${id} below its limit`).toBeLessThanOrEqual(a.cP + a.lim);
      }
      if (a.role === 'provider') expect(a.cP - a.dP, `${id} payable below zero`).toBeGreaterThanOrEqual(0);
    }
    expect(posted, 'posted balances sum to zero').toBe(0);
    expect(pending, 'pending balances sum to zero').toBe(0);

    // Replay the new transfers on what was replayed before.
    const replay = this.replay;
    const resolved = this.resolved;
    const byId = this.seen;
    const at = (id: string) => {
      let r = replay.get(id);
      if (!r) replay.set(id, (r = { dp: 0, dP: 0, cp: 0, cP: 0 }));
      return r;
    };
    for (const t of transfers) {
      if (byId.has(t.id)) continue;
      byId.set(t.id, t);
      this.lastAt = t.at;
      const a = n(t.a);
      if (t.kind === 'posted') {
        at(t.d).dP += a;
        at(t.c).cP += a;
      } else if (t.kind === 'pending') {
        at(t.d).dp += a;
        at(t.c).cp += a;
        this.open.add(t.id);
      } else {
        const p = byId.get(t.pid!);
        expect(p?.kind, `${t.id} resolves a pending transfer`).toBe('pending');
        expect(resolved.get(t.pid!), `hold ${t.pid} resolved twice`).toBeUndefined();
        resolved.set(t.pid!, t.id);
        this.open.delete(t.pid!);
        expect(t.d === p!.d && t.c === p!.c, `${t.id} moves between its hold's accounts`).toBe(true);
        const held = n(p!.a);
        expect(a, `${t.id} posts no more than held`).toBeLessThanOrEqual(held);
        if (t.kind === 'void') expect(a).toBe(0);
        at(t.d).dp -= held;
        at(t.c).cp -= held;
        at(t.d).dP += a;
        at(t.c).cP += a;
      }
    }
    for (const [id, a] of stored) {
      const r = replay.get(id) ?? { dp: 0, dP: 0, cp: 0, cP: 0 };
      expect({ id, dp: a.dp, dP: a.dP, cp: a.cp, cP: a.cP }, `${id} equals the replay of its transfers`).toEqual({ id, ...r });
    }

    // Open holds are exactly the live leases' current ones.
    const open = new Set(this.open);
    for (const j of holds) {
      if (j.hold_id === null) continue;
      expect(['leased', 'running'], `job ${j.id} holds credit while ${j.status}`).toContain(j.status);
      expect(open.has(j.hold_id), `job ${j.id}'s hold ${j.hold_id} is open`).toBe(true);
      expect(n(j.hold_micros)).toBe(n(byId.get(j.hold_id)!.a));
      open.delete(j.hold_id);
    }
    expect([...open], 'open holds of no live lease').toEqual([]);
  }
}
