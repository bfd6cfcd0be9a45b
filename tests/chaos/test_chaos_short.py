"""The short chaos suite: a surge through one stack with services killed mid-flight and a flood
of forged webhooks, each ending with the same invariant check as `make chaos` (chaos/)."""

import asyncio
import contextlib

import pytest

from chaos.harness import Scenario, Settings, exercise
from chaos.scenarios import forged_mix, kill_allocator_and_notifier
from deploy.embedded.stack import Stack, StackOptions

pytestmark = pytest.mark.e2e

# small and slow enough for a busy 2-core machine; "eventually" gets generous limits
SETTINGS = Settings(orders=150, rate=40, forged=300, drain_limit_s=150)
REFUSALS = {400, 401, 404, 413, 415, 422}


@pytest.fixture(scope="module")
async def stack(tmp_path_factory, module_database, kafka):
    options = StackOptions(
        home=tmp_path_factory.mktemp("chaos"),
        database_url=module_database,
        kafka_bootstrap=kafka,
        demo_stock_per_sku=400,
    )
    stack = Stack(options)
    try:
        info = await stack.start()
        supervisor = asyncio.create_task(stack.supervise())  # restarts what the tests kill
        yield stack, info
        supervisor.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await supervisor
    finally:
        stack.stop()


async def test_killing_allocator_and_notifier_mid_surge_loses_and_repeats_nothing(stack):
    running, info = stack
    scenario = Scenario("kill", "SIGKILL", kill_allocator_and_notifier, kills=True)

    outcome = await exercise(running, info, scenario, SETTINGS)

    assert outcome.problems == [], outcome.evidence
    assert outcome.acknowledged == outcome.delivered == SETTINGS.orders
    assert outcome.duplicates == outcome.lost == 0
    # each was killed, then killed again while it restarted
    assert outcome.restarts.get("allocator", 0) >= 2
    assert outcome.restarts.get("notifier", 0) >= 2


async def test_forged_malformed_and_oversized_webhooks_are_refused_and_crash_nothing(stack):
    running, info = stack
    scenario = Scenario("forged", "forged", forged_mix)

    outcome = await exercise(running, info, scenario, SETTINGS)

    assert outcome.problems == [], outcome.evidence  # includes: no service restarted
    assert outcome.acknowledged == outcome.delivered == SETTINGS.orders
    statuses = outcome.notes["forged_statuses"]
    assert sum(statuses.values()) == SETTINGS.forged
    assert set(statuses) <= REFUSALS, statuses
    assert 413 in statuses and 401 in statuses and 400 in statuses
