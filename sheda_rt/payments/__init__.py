"""Payments through a gateway (Paystack): attempts, signed webhooks, reconciliation."""
