ALTER TABLE "jobs" drop column "queue_shape";--> statement-breakpoint
ALTER TABLE "jobs" ADD COLUMN "queue_shape" text GENERATED ALWAYS AS (md5(gpu_count::text || '|' || coalesce(gpu_model, '') || '|' || coalesce(gpu_min_memory_mb::text, '') || '|' || cpu_millis::text || '|' || memory_mb::text || '|' || disk_mb::text || '|' || coalesce(max_price_micros::text, '') || '|' || coalesce(region, '') || '|' || coalesce((spec -> 'constraints')::text, '') || '|' || coalesce(spec -> 'resources' -> 'gpu' ->> 'minCudaVersion', '') || '|' || split_part(spec ->> 'image', '/', 1) || '|' || coalesce(spec ->> 'network', ''))) STORED;--> statement-breakpoint
-- Dropping the column dropped its index: made again.
CREATE INDEX "jobs_queue_shape" ON "jobs" USING btree ("queue_shape") WHERE "jobs"."status" = 'queued';--> statement-breakpoint
-- The shapes changed: the reasons kept under the old ones are recomputed by the next pass.
DELETE FROM "queue_reasons";
