CREATE TABLE "accounts" (
	"id" text PRIMARY KEY NOT NULL,
	"name" text NOT NULL,
	"kind" text NOT NULL,
	"is_admin" boolean DEFAULT false NOT NULL,
	"created_at" timestamp with time zone DEFAULT now() NOT NULL,
	CONSTRAINT "accounts_kind" CHECK ("accounts"."kind" in ('client', 'provider', 'both'))
);
--> statement-breakpoint
CREATE TABLE "api_keys" (
	"id" text PRIMARY KEY NOT NULL,
	"account_id" text NOT NULL,
	"name" text,
	"prefix" text NOT NULL,
	"hash" text NOT NULL,
	"scopes" jsonb NOT NULL,
	"created_at" timestamp with time zone DEFAULT now() NOT NULL,
	"last_used_at" timestamp with time zone,
	"revoked_at" timestamp with time zone
);
--> statement-breakpoint
CREATE TABLE "job_events" (
	"id" bigserial PRIMARY KEY NOT NULL,
	"job_id" text NOT NULL,
	"created_at" timestamp with time zone DEFAULT now() NOT NULL,
	"from_status" text,
	"to_status" text NOT NULL,
	"reason" text NOT NULL
);
--> statement-breakpoint
CREATE TABLE "jobs" (
	"id" text PRIMARY KEY NOT NULL,
	"account_id" text NOT NULL,
	"name" text NOT NULL,
	"spec" jsonb NOT NULL,
	"spec_digest" text NOT NULL,
	"status" text NOT NULL,
	"priority" integer DEFAULT 0 NOT NULL,
	"cpu_millis" integer NOT NULL,
	"memory_mb" integer NOT NULL,
	"gpu_count" integer DEFAULT 0 NOT NULL,
	"gpu_model" text,
	"gpu_min_memory_mb" integer,
	"max_price_micros" bigint,
	"region" text,
	"attempts" integer DEFAULT 0 NOT NULL,
	"max_attempts" integer NOT NULL,
	"node_id" text,
	"gpu_ids" jsonb,
	"lease_id" text,
	"lease_epoch" integer DEFAULT 0 NOT NULL,
	"lease_expires_at" timestamp with time zone,
	"lease_token_expires_at" timestamp with time zone,
	"price_gpu_hour_micros" bigint,
	"price_cpu_hour_micros" bigint,
	"pending_reason" text,
	"queue_shape" text GENERATED ALWAYS AS (md5(gpu_count::text || '|' || coalesce(gpu_model, '') || '|' || coalesce(gpu_min_memory_mb::text, '') || '|' || cpu_millis::text || '|' || memory_mb::text || '|' || coalesce(max_price_micros::text, '') || '|' || coalesce(region, '') || '|' || coalesce((spec -> 'constraints')::text, '') || '|' || coalesce(spec -> 'resources' -> 'gpu' ->> 'minCudaVersion', ''))) STORED,
	"cancel_requested_at" timestamp with time zone,
	"idempotency_key" text,
	"created_at" timestamp with time zone DEFAULT now() NOT NULL,
	"updated_at" timestamp with time zone DEFAULT now() NOT NULL,
	"leased_at" timestamp with time zone,
	"started_at" timestamp with time zone,
	"finished_at" timestamp with time zone,
	"exit_code" integer,
	"error" text,
	"result" jsonb,
	"usage" jsonb,
	"cost_micros" bigint,
	CONSTRAINT "jobs_status" CHECK ("jobs"."status" in ('queued', 'leased', 'running', 'succeeded', 'failed', 'cancelled')),
	CONSTRAINT "jobs_attempts" CHECK ("jobs"."attempts" >= 0 and "jobs"."attempts" <= "jobs"."max_attempts")
);
--> statement-breakpoint
CREATE TABLE "enrollment_tokens" (
	"id" text PRIMARY KEY NOT NULL,
	"account_id" text NOT NULL,
	"prefix" text NOT NULL,
	"hash" text NOT NULL,
	"labels" jsonb DEFAULT '{}'::jsonb NOT NULL,
	"uses_left" integer NOT NULL,
	"expires_at" timestamp with time zone NOT NULL,
	"created_at" timestamp with time zone DEFAULT now() NOT NULL,
	CONSTRAINT "enrollment_tokens_prefix_unique" UNIQUE("prefix"),
	CONSTRAINT "enrollment_tokens_uses" CHECK ("enrollment_tokens"."uses_left" >= 0)
);
--> statement-breakpoint
CREATE TABLE "gpus" (
	"node_id" text NOT NULL,
	"id" text NOT NULL,
	"index" integer NOT NULL,
	"uuid" text NOT NULL,
	"model" text NOT NULL,
	"memory_mb" integer NOT NULL,
	"driver_version" text,
	"cuda_version" text,
	"pci_bus_id" text,
	"mig" jsonb,
	"job_id" text,
	"utilization_pct" integer,
	"memory_used_mb" integer,
	"temperature_c" integer,
	"power_w" integer,
	CONSTRAINT "gpus_node_id_id_pk" PRIMARY KEY("node_id","id"),
	CONSTRAINT "gpus_memory" CHECK ("gpus"."memory_mb" >= 0)
);
--> statement-breakpoint
CREATE TABLE "node_metrics" (
	"node_id" text NOT NULL,
	"at" timestamp with time zone NOT NULL,
	"sample" jsonb NOT NULL,
	CONSTRAINT "node_metrics_node_id_at_pk" PRIMARY KEY("node_id","at")
);
--> statement-breakpoint
CREATE TABLE "nodes" (
	"id" text PRIMARY KEY NOT NULL,
	"account_id" text NOT NULL,
	"name" text NOT NULL,
	"status" text NOT NULL,
	"draining" boolean DEFAULT false NOT NULL,
	"takes_work" boolean DEFAULT true NOT NULL,
	"labels" jsonb DEFAULT '{}'::jsonb NOT NULL,
	"region" text,
	"public_key" jsonb NOT NULL,
	"agent_version" text,
	"runtime" jsonb,
	"host" jsonb,
	"cpu_millis" integer NOT NULL,
	"memory_mb" integer NOT NULL,
	"disk_mb" integer DEFAULT 0 NOT NULL,
	"allocated_cpu_millis" integer DEFAULT 0 NOT NULL,
	"allocated_memory_mb" integer DEFAULT 0 NOT NULL,
	"price_gpu_hour_micros" bigint DEFAULT 0 NOT NULL,
	"price_cpu_hour_micros" bigint DEFAULT 0 NOT NULL,
	"last_heartbeat_at" timestamp with time zone,
	"metrics" jsonb,
	"last_placed_at" timestamp with time zone,
	"jobs_succeeded" integer DEFAULT 0 NOT NULL,
	"jobs_failed" integer DEFAULT 0 NOT NULL,
	"lease_expiries" integer DEFAULT 0 NOT NULL,
	"created_at" timestamp with time zone DEFAULT now() NOT NULL,
	CONSTRAINT "nodes_status" CHECK ("nodes"."status" in ('online', 'offline', 'retired')),
	CONSTRAINT "nodes_allocation" CHECK ("nodes"."allocated_cpu_millis" >= 0 and "nodes"."allocated_memory_mb" >= 0 and "nodes"."allocated_cpu_millis" <= "nodes"."cpu_millis" and "nodes"."allocated_memory_mb" <= "nodes"."memory_mb"),
	CONSTRAINT "nodes_prices" CHECK ("nodes"."price_gpu_hour_micros" >= 0 and "nodes"."price_cpu_hour_micros" >= 0)
);
--> statement-breakpoint
CREATE TABLE "signing_keys" (
	"kid" text PRIMARY KEY NOT NULL,
	"private_jwk" jsonb,
	"public_jwk" jsonb NOT NULL,
	"created_at" timestamp with time zone DEFAULT now() NOT NULL,
	"retired_at" timestamp with time zone
);
--> statement-breakpoint
CREATE TABLE "blob_chunks" (
	"digest" text NOT NULL,
	"seq" integer NOT NULL,
	"data" "bytea" NOT NULL,
	CONSTRAINT "blob_chunks_digest_seq_pk" PRIMARY KEY("digest","seq")
);
--> statement-breakpoint
CREATE TABLE "blobs" (
	"digest" text NOT NULL,
	"account_id" text NOT NULL,
	"size" bigint NOT NULL,
	"created_at" timestamp with time zone DEFAULT now() NOT NULL,
	CONSTRAINT "blobs_digest_account_id_pk" PRIMARY KEY("digest","account_id"),
	CONSTRAINT "blobs_size" CHECK ("blobs"."size" >= 0)
);
--> statement-breakpoint
CREATE TABLE "job_logs" (
	"job_id" text NOT NULL,
	"seq" integer NOT NULL,
	"stream" text NOT NULL,
	"at" timestamp with time zone NOT NULL,
	"lines" integer NOT NULL,
	"bytes" integer NOT NULL,
	"text" text NOT NULL,
	CONSTRAINT "job_logs_job_id_seq_pk" PRIMARY KEY("job_id","seq"),
	CONSTRAINT "job_logs_counts" CHECK ("job_logs"."seq" >= 0 and "job_logs"."lines" >= 0 and "job_logs"."bytes" >= 0),
	CONSTRAINT "job_logs_stream" CHECK ("job_logs"."stream" in ('stdout', 'stderr', 'system'))
);
--> statement-breakpoint
CREATE TABLE "job_outputs" (
	"job_id" text PRIMARY KEY NOT NULL,
	"digest" text NOT NULL,
	"size" bigint NOT NULL,
	"created_at" timestamp with time zone DEFAULT now() NOT NULL,
	CONSTRAINT "job_outputs_size" CHECK ("job_outputs"."size" >= 0)
);
--> statement-breakpoint
CREATE TABLE "pool_history" (
	"at" timestamp with time zone PRIMARY KEY NOT NULL,
	"sample" jsonb NOT NULL
);
--> statement-breakpoint
CREATE TABLE "queue_reasons" (
	"shape" text PRIMARY KEY NOT NULL,
	"reason" text NOT NULL,
	"request" jsonb NOT NULL,
	"updated_at" timestamp with time zone DEFAULT now() NOT NULL
);
--> statement-breakpoint
ALTER TABLE "api_keys" ADD CONSTRAINT "api_keys_account_id_accounts_id_fk" FOREIGN KEY ("account_id") REFERENCES "public"."accounts"("id") ON DELETE no action ON UPDATE no action;--> statement-breakpoint
ALTER TABLE "job_events" ADD CONSTRAINT "job_events_job_id_jobs_id_fk" FOREIGN KEY ("job_id") REFERENCES "public"."jobs"("id") ON DELETE no action ON UPDATE no action;--> statement-breakpoint
ALTER TABLE "jobs" ADD CONSTRAINT "jobs_account_id_accounts_id_fk" FOREIGN KEY ("account_id") REFERENCES "public"."accounts"("id") ON DELETE no action ON UPDATE no action;--> statement-breakpoint
ALTER TABLE "enrollment_tokens" ADD CONSTRAINT "enrollment_tokens_account_id_accounts_id_fk" FOREIGN KEY ("account_id") REFERENCES "public"."accounts"("id") ON DELETE no action ON UPDATE no action;--> statement-breakpoint
ALTER TABLE "gpus" ADD CONSTRAINT "gpus_node_id_nodes_id_fk" FOREIGN KEY ("node_id") REFERENCES "public"."nodes"("id") ON DELETE no action ON UPDATE no action;--> statement-breakpoint
ALTER TABLE "node_metrics" ADD CONSTRAINT "node_metrics_node_id_nodes_id_fk" FOREIGN KEY ("node_id") REFERENCES "public"."nodes"("id") ON DELETE no action ON UPDATE no action;--> statement-breakpoint
ALTER TABLE "nodes" ADD CONSTRAINT "nodes_account_id_accounts_id_fk" FOREIGN KEY ("account_id") REFERENCES "public"."accounts"("id") ON DELETE no action ON UPDATE no action;--> statement-breakpoint
ALTER TABLE "blobs" ADD CONSTRAINT "blobs_account_id_accounts_id_fk" FOREIGN KEY ("account_id") REFERENCES "public"."accounts"("id") ON DELETE no action ON UPDATE no action;--> statement-breakpoint
ALTER TABLE "job_logs" ADD CONSTRAINT "job_logs_job_id_jobs_id_fk" FOREIGN KEY ("job_id") REFERENCES "public"."jobs"("id") ON DELETE no action ON UPDATE no action;--> statement-breakpoint
ALTER TABLE "job_outputs" ADD CONSTRAINT "job_outputs_job_id_jobs_id_fk" FOREIGN KEY ("job_id") REFERENCES "public"."jobs"("id") ON DELETE no action ON UPDATE no action;--> statement-breakpoint
CREATE UNIQUE INDEX "api_keys_prefix" ON "api_keys" USING btree ("prefix");--> statement-breakpoint
CREATE INDEX "api_keys_account" ON "api_keys" USING btree ("account_id");--> statement-breakpoint
CREATE INDEX "job_events_job" ON "job_events" USING btree ("job_id","id");--> statement-breakpoint
CREATE UNIQUE INDEX "jobs_idempotency" ON "jobs" USING btree ("account_id","idempotency_key");--> statement-breakpoint
CREATE INDEX "jobs_account_id" ON "jobs" USING btree ("account_id","id");--> statement-breakpoint
CREATE INDEX "jobs_account_status_id" ON "jobs" USING btree ("account_id","status","id");--> statement-breakpoint
CREATE INDEX "jobs_queue" ON "jobs" USING btree ((-"priority"),"id") WHERE "jobs"."status" = 'queued';--> statement-breakpoint
CREATE INDEX "jobs_queue_shape" ON "jobs" USING btree ("queue_shape") WHERE "jobs"."status" = 'queued';--> statement-breakpoint
CREATE INDEX "jobs_node_live" ON "jobs" USING btree ("node_id") WHERE "jobs"."status" in ('leased', 'running');--> statement-breakpoint
CREATE INDEX "jobs_lease_expiry" ON "jobs" USING btree ("lease_expires_at") WHERE "jobs"."status" in ('leased', 'running');--> statement-breakpoint
CREATE INDEX "jobs_started_at" ON "jobs" USING btree ("started_at") WHERE "jobs"."started_at" is not null;--> statement-breakpoint
CREATE INDEX "jobs_finished_at" ON "jobs" USING btree ("finished_at") WHERE "jobs"."finished_at" is not null;--> statement-breakpoint
CREATE INDEX "jobs_account_finished" ON "jobs" USING btree ("account_id","finished_at") WHERE "jobs"."finished_at" is not null;--> statement-breakpoint
CREATE INDEX "jobs_node_finished" ON "jobs" USING btree ("node_id","finished_at") WHERE "jobs"."finished_at" is not null;--> statement-breakpoint
CREATE INDEX "gpus_uuid" ON "gpus" USING btree ("uuid");--> statement-breakpoint
CREATE INDEX "gpus_free" ON "gpus" USING btree ("model") WHERE "gpus"."job_id" is null;--> statement-breakpoint
CREATE INDEX "gpus_job" ON "gpus" USING btree ("job_id");--> statement-breakpoint
CREATE INDEX "node_metrics_at" ON "node_metrics" USING btree ("at");--> statement-breakpoint
CREATE INDEX "nodes_account" ON "nodes" USING btree ("account_id","id");--> statement-breakpoint
CREATE INDEX "nodes_status_heartbeat" ON "nodes" USING btree ("status","last_heartbeat_at");--> statement-breakpoint
CREATE INDEX "job_outputs_digest" ON "job_outputs" USING btree ("digest");