"""A consumer write is finished by reading back: a server that kept something other than what was
sent fails the write (the apps' bridges are derived from what was sent). Pure: no server needed to
judge an answer."""

from __future__ import annotations

import pytest

from jsb_infra.core.spec import Pair
from jsb_infra.deploy.providers.base import ProviderError
from jsb_infra.deploy.providers.consumer import ConsumerSpec, consumer_inputs, holds_rendered

PAIR = Pair.model_validate(
    {"stream": "orders-billing-sync", "apps": ["orders", "billing"], "consumer": {"max_deliver": 5}}
)


def answer(config: dict) -> dict:
    return {"name": config["durable_name"], "stream_name": PAIR.stream, "config": config, "created": "t"}


def test_an_answer_holding_what_was_sent_passes():
    spec = ConsumerSpec.of(consumer_inputs(PAIR, "billing"))
    info = answer(dict(spec.config))
    assert holds_rendered(spec, info) is info


def test_an_answer_holding_another_max_deliver_fails_naming_the_field():
    spec = ConsumerSpec.of(consumer_inputs(PAIR, "billing"))
    with pytest.raises(ProviderError, match=r"billing-workers: after the write the server holds max_deliver"):
        holds_rendered(spec, answer({**spec.config, "max_deliver": 9}))
