ALTER TABLE "jobs" ADD COLUMN "disk_mb" integer DEFAULT 0 NOT NULL;--> statement-breakpoint
ALTER TABLE "nodes" ADD COLUMN "allocated_disk_mb" integer DEFAULT 0 NOT NULL;--> statement-breakpoint
ALTER TABLE "jobs" drop column "queue_shape";--> statement-breakpoint
ALTER TABLE "jobs" ADD COLUMN "queue_shape" text GENERATED ALWAYS AS (md5(gpu_count::text || '|' || coalesce(gpu_model, '') || '|' || coalesce(gpu_min_memory_mb::text, '') || '|' || cpu_millis::text || '|' || memory_mb::text || '|' || disk_mb::text || '|' || coalesce(max_price_micros::text, '') || '|' || coalesce(region, '') || '|' || coalesce((spec -> 'constraints')::text, '') || '|' || coalesce(spec -> 'resources' -> 'gpu' ->> 'minCudaVersion', ''))) STORED;--> statement-breakpoint
CREATE INDEX "jobs_queue_shape" ON "jobs" USING btree ("queue_shape") WHERE "jobs"."status" = 'queued';
