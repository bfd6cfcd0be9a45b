"""Providers' delivery receipts, through the gateway like every outside party: WhatsApp status
webhooks (and Meta's subscription check), Twilio status callbacks, Unifonic DLRs and SES events
by SNS. Each is verified here, published to `delivery.receipt` and answered 2xx only once the
broker acknowledged it; the notifier applies them."""
