"""Why the gateway refuses a webhook: each error is an HTTP status and a stable error code.

They are the gateway's words in the shared vocabulary (`shared.failures`): a 5xx is a
dependency that is down (the platform should retry), a 4xx a request that will never pass.
"""

from __future__ import annotations

from shared.failures import Failure, Fate


class IngestError(Failure):
    """A webhook the gateway refuses; `status` and `code` become the JSON response."""

    status = 400
    code = "bad_request"
    fate = Fate.REFUSE

    def __init_subclass__(cls) -> None:
        # a 5xx says "not now" to the platform, whose retry may then pass
        super().__init_subclass__()
        cls.fate = Fate.RETRY if cls.status >= 500 else Fate.REFUSE


class InvalidSignature(IngestError):
    """The sender could not be verified."""

    status = 401
    code = "invalid_signature"


class UnknownStore(IngestError):
    """No store is registered under this id for this platform."""

    status = 404
    code = "unknown_store"


class PayloadTooLarge(IngestError):
    """The body is over the size limit."""

    status = 413
    code = "payload_too_large"


class BodyTimeout(IngestError):
    """The body did not arrive in time (a slow sender holds a connection, nothing more)."""

    status = 408
    code = "request_timeout"


class UnsupportedMediaType(IngestError):
    """The body is not JSON."""

    status = 415
    code = "unsupported_media_type"


class MalformedJson(IngestError):
    """The body does not parse as JSON."""

    status = 400
    code = "malformed_json"


class InvalidOrder(IngestError):
    """Valid JSON that is not an order we can deliver."""

    status = 422
    code = "invalid_order"


class OrderTooLarge(InvalidOrder):
    """More lines or units than the store allows in one order."""

    code = "order_too_large"


class UnknownSku(InvalidOrder):
    """A sku outside the store's catalogue (its sku map)."""

    code = "unknown_sku"


class WrongMerchant(IngestError):
    """A signed body that names another merchant than the store's."""

    status = 403
    code = "wrong_merchant"


class BrokerUnavailable(IngestError):
    """The broker did not acknowledge in time: the platform should retry."""

    status = 503
    code = "broker_unavailable"


class RegistryUnavailable(IngestError):
    """The store registry could not be read: the platform should retry."""

    status = 503
    code = "registry_unavailable"


class UnconfirmedOrder(IngestError):
    """The platform's own API does not confirm the order the webhook names (Zid: unsigned)."""

    status = 422
    code = "unconfirmed_order"


class PlatformUnavailable(IngestError):
    """The platform's API, which must confirm the order, did not answer: the platform retries."""

    status = 503
    code = "platform_unavailable"


class StoreMisconfigured(IngestError):
    """The store cannot be checked as set up (no or a refused API credential, or secrets that
    do not open with the vault keys): an operator must act, then the platform's retry passes."""

    status = 503
    code = "store_misconfigured"
