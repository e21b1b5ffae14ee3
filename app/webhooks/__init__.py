"""Outbound webhooks: the outbox (written in the same transaction as the event), the
signed delivery with retries and dead-lettering, and the delivery log."""
