ALTER TABLE "api_keys" ADD COLUMN "expires_at" timestamp with time zone;--> statement-breakpoint
ALTER TABLE "api_keys" ADD COLUMN "created_by_key_id" text;--> statement-breakpoint
ALTER TABLE "enrollment_tokens" ADD COLUMN "revoked_at" timestamp with time zone;--> statement-breakpoint
CREATE INDEX "api_keys_created_by" ON "api_keys" USING btree ("created_by_key_id");--> statement-breakpoint
CREATE INDEX "enrollment_tokens_account" ON "enrollment_tokens" USING btree ("account_id");