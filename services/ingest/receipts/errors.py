"""Why the gateway refuses a receipt, besides what it refuses store webhooks for."""

from __future__ import annotations

from services.ingest.errors import IngestError


class ReceiptsOff(IngestError):
    """No secret is configured for this provider's receipts: none can be verified."""

    status = 403
    code = "receipts_off"


class InvalidReceipt(IngestError):
    """Verified, but not a receipt in the provider's format."""

    status = 422
    code = "invalid_receipt"


class CertificateUnavailable(IngestError):
    """SNS's signing certificate or subscription URL could not be fetched: SNS should retry."""

    status = 503
    code = "certificate_unavailable"
