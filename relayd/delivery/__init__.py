"""Delivery: one upstream SMTP/LMTP connection carrying many messages, and what became of each."""
