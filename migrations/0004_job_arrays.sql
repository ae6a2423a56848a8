DROP INDEX "jobs_account_id";--> statement-breakpoint
DROP INDEX "jobs_account_status_id";--> statement-breakpoint
ALTER TABLE "jobs" ADD COLUMN "parent_id" text;--> statement-breakpoint
ALTER TABLE "jobs" ADD COLUMN "task_index" integer;--> statement-breakpoint
ALTER TABLE "jobs" ADD COLUMN "task_count" integer;--> statement-breakpoint
ALTER TABLE "jobs" ADD COLUMN "max_parallel" integer;--> statement-breakpoint
ALTER TABLE "jobs" ADD COLUMN "tasks_active" integer DEFAULT 0 NOT NULL;--> statement-breakpoint
CREATE INDEX "jobs_parent_status" ON "jobs" USING btree ("parent_id","status","task_index") WHERE "jobs"."parent_id" is not null;--> statement-breakpoint
CREATE INDEX "jobs_account_id" ON "jobs" USING btree ("account_id","id") WHERE "jobs"."parent_id" is null;--> statement-breakpoint
CREATE INDEX "jobs_account_status_id" ON "jobs" USING btree ("account_id","status","id") WHERE "jobs"."parent_id" is null;--> statement-breakpoint
ALTER TABLE "jobs" ADD CONSTRAINT "jobs_tasks_active" CHECK ("jobs"."tasks_active" >= 0 and ("jobs"."max_parallel" is null or "jobs"."tasks_active" <= "jobs"."max_parallel"));