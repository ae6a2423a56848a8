CREATE TABLE "ledger_accounts" (
	"id" text PRIMARY KEY NOT NULL,
	"account_id" text,
	"role" text NOT NULL,
	"debits_pending" bigint DEFAULT 0 NOT NULL,
	"debits_posted" bigint DEFAULT 0 NOT NULL,
	"credits_pending" bigint DEFAULT 0 NOT NULL,
	"credits_posted" bigint DEFAULT 0 NOT NULL,
	"credit_limit" bigint DEFAULT 0 NOT NULL,
	"created_at" timestamp with time zone DEFAULT now() NOT NULL,
	CONSTRAINT "ledger_accounts_role" CHECK ("ledger_accounts"."role" in ('client', 'provider', 'fees', 'bank')),
	CONSTRAINT "ledger_accounts_no_overdraft" CHECK ("ledger_accounts"."role" not in ('client', 'provider') or "ledger_accounts"."debits_posted" + "ledger_accounts"."debits_pending" <= "ledger_accounts"."credits_posted" + "ledger_accounts"."credit_limit"),
	CONSTRAINT "ledger_accounts_limit" CHECK ("ledger_accounts"."credit_limit" >= 0)
);
--> statement-breakpoint
CREATE TABLE "ledger_transfers" (
	"id" text PRIMARY KEY NOT NULL,
	"debit_account_id" text NOT NULL,
	"credit_account_id" text NOT NULL,
	"amount" bigint NOT NULL,
	"kind" text NOT NULL,
	"pending_id" text,
	"code" text NOT NULL,
	"reference" text,
	"job_id" text,
	"lease_id" text,
	"node_id" text,
	"created_at" timestamp with time zone DEFAULT now() NOT NULL,
	CONSTRAINT "ledger_transfers_kind" CHECK ("ledger_transfers"."kind" in ('posted', 'pending', 'post', 'void')),
	CONSTRAINT "ledger_transfers_amount" CHECK ("ledger_transfers"."amount" >= 0 and ("ledger_transfers"."amount" > 0 or "ledger_transfers"."kind" in ('post', 'void'))),
	CONSTRAINT "ledger_transfers_pending" CHECK (("ledger_transfers"."pending_id" is not null) = ("ledger_transfers"."kind" in ('post', 'void')))
);
--> statement-breakpoint
ALTER TABLE "jobs" ADD COLUMN "hold_id" text;--> statement-breakpoint
ALTER TABLE "jobs" ADD COLUMN "hold_micros" bigint;--> statement-breakpoint
ALTER TABLE "jobs" ADD COLUMN "held_until" timestamp with time zone;--> statement-breakpoint
ALTER TABLE "jobs" ADD COLUMN "bill_at" timestamp with time zone;--> statement-breakpoint
ALTER TABLE "jobs" ADD COLUMN "lease_billed_micros" bigint;--> statement-breakpoint
ALTER TABLE "jobs" ADD COLUMN "lease_seen_at" timestamp with time zone;--> statement-breakpoint
ALTER TABLE "jobs" ADD COLUMN "credit_short_at" timestamp with time zone;--> statement-breakpoint
ALTER TABLE "jobs" ADD COLUMN "fee_basis_points" integer;--> statement-breakpoint
CREATE INDEX "ledger_accounts_account" ON "ledger_accounts" USING btree ("account_id");--> statement-breakpoint
CREATE UNIQUE INDEX "ledger_transfers_resolves" ON "ledger_transfers" USING btree ("pending_id") WHERE "ledger_transfers"."pending_id" is not null;--> statement-breakpoint
CREATE INDEX "ledger_transfers_debit" ON "ledger_transfers" USING btree ("debit_account_id","created_at");--> statement-breakpoint
CREATE INDEX "ledger_transfers_credit" ON "ledger_transfers" USING btree ("credit_account_id","created_at");