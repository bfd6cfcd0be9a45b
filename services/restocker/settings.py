from dataclasses import fields, replace
from decimal import Decimal

from pydantic import Field, SecretStr

from services.restocker.policy import Policy
from services.restocker.purchasing import Limits
from services.restocker.suppliers import SupplierSettings
from shared.settings import ServiceSettings, VaultKeySettings


class RestockerSettings(ServiceSettings, VaultKeySettings):
    admin_port: int = 9103
    # /stock and /admin/: `caller:role:sha256` entries, one per caller's token
    # (shared/admin_auth.py); empty: /stock is refused
    restocker_admin_tokens: SecretStr = SecretStr("")
    app_id: str = "restocker"
    # inventory.level's partition count: faust's changelog topics must match it exactly
    topic_partitions: int = 4
    # replication of the changelog topics faust creates (3 on a production cluster)
    topic_replication_factor: int = 1

    # The suppliers, as JSON (TASLEEM_SUPPLIERS='[{"name": ..., "kind": ...}, ...]'). When
    # empty, one Reloadly-like supplier is made from the TASLEEM_SUPPLIER_* values below.
    suppliers: list[SupplierSettings] = Field(default_factory=list)
    supplier_base_url: str = "http://127.0.0.1:8090/reloadly"
    supplier_client_id: str = ""
    supplier_client_secret: SecretStr = SecretStr("")
    supplier_products: dict[str, int] = Field(default_factory=dict)  # our sku -> product id
    supplier_timeout_s: float = 10.0

    # policy, for every sku unless `sku_policies` says otherwise for one
    reorder_point: int = 20  # the floor under rate x lead time x safety factor
    order_quantity: int = 100  # the smallest order
    max_order_quantity: int = 1000
    safety_factor: float = 1.5
    target_cover_s: float = 3600.0
    rate_window_s: float = 300.0
    # sku -> overrides of the fields of policy.Policy, e.g. {"PSN-50": {"min_order": 50}}
    sku_policies: dict[str, dict[str, float]] = Field(default_factory=dict)

    # spend: skus belong to stores; each store may cap what is spent on it per UTC day
    sku_stores: dict[str, str] = Field(default_factory=dict)
    store_daily_spend_caps: dict[str, Decimal] = Field(default_factory=dict)
    default_daily_spend_cap: Decimal | None = None

    max_failures: int = 3
    # a supplier found down or throttling is skipped by other purchases this long
    supplier_rest_s: float = 30.0
    retry_s: float = 2.0
    blocked_retry_s: float = 30.0
    poll_interval_s: float = 1.0
    sweep_interval_s: float = 1.0
    # a purchase published but not in the vault after this long is looked up and sent again
    resume_after_s: float = 20.0

    def supplier_list(self) -> list[SupplierSettings]:
        if self.suppliers:
            return self.suppliers
        return [
            SupplierSettings(
                name="reloadly",
                kind="reloadly",
                base_url=self.supplier_base_url,
                products={sku: str(pid) for sku, pid in self.supplier_products.items()},
                credentials={
                    "client_id": SecretStr(self.supplier_client_id),
                    "client_secret": self.supplier_client_secret,
                },
            )
        ]

    def policy(self, sku: str, lead_time_s: float) -> Policy:
        base = Policy(
            reorder_floor=self.reorder_point,
            min_order=self.order_quantity,
            max_order=self.max_order_quantity,
            safety_factor=self.safety_factor,
            target_cover_s=self.target_cover_s,
            rate_window_s=self.rate_window_s,
            lead_time_s=lead_time_s,
        )
        known = {f.name: f.type for f in fields(Policy)}
        asked = self.sku_policies.get(sku, {})
        if unknown := set(asked) - set(known):
            raise ValueError(f"sku_policies[{sku}]: unknown fields {sorted(unknown)}")
        overrides = {
            name: int(value) if known[name] == "int" else float(value)
            for name, value in asked.items()
        }
        return replace(base, **overrides)  # type: ignore[arg-type]

    def limits(self) -> Limits:
        return Limits(
            max_failures=self.max_failures,
            rest_s=self.supplier_rest_s,
            retry_s=self.retry_s,
            blocked_retry_s=self.blocked_retry_s,
            poll_s=self.poll_interval_s,
            resume_after_s=self.resume_after_s,
            sku_stores=self.sku_stores,
            daily_caps=self.store_daily_spend_caps,
            default_daily_cap=self.default_daily_spend_cap,
        )
