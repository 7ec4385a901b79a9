"""`headwater_kafka_offset_lag` (Lambda's OffsetLag) on the real broker, in this process: one series per
mapping, with its function, summed over the partitions the poller owns, and gone once it owns none."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from tests.kafka.conftest import KafkaStack
from tests.kafka.test_kafka_source import assigned, mapping_for, source_for
from tests.rig import KafkaBroker
from tests.waiting import eventually


@pytest.mark.kafka
async def test_offset_lag_is_one_series_per_mapping_summed_over_its_partitions(
    kafka_broker: KafkaBroker, redis_url: str, tmp_path: Path
) -> None:
    stack = KafkaStack(kafka_broker, redis_url, tmp_path)
    await stack.create_topic()
    await stack.produce(*({"partition": p, "value": f"{p}-{i}"} for p in range(3) for i in range(p + 1)))  # 1+2+3
    mapping = mapping_for(stack, "lagging")
    source = source_for(mapping)
    labels = {"function": "lagging", "mapping": mapping.uuid}

    def series() -> list[dict[str, str]]:
        family = next(f for f in REGISTRY.collect() if f.name == "headwater_kafka_offset_lag")
        return [sample.labels for sample in family.samples if sample.labels["mapping"] == mapping.uuid]

    def lag() -> float | None:
        return REGISTRY.get_sample_value("headwater_kafka_offset_lag", labels)

    await source.start()
    try:
        await assigned(source)
        await eventually(lambda: lag() == 6, 10, lambda: f"lag {lag()}, series {series()}")  # read once assigned
        assert series() == [labels]  # not per partition
    finally:
        await source.stop()
    await eventually(lambda: series() == [], 5, lambda: f"still exported after the consumer left: {series()}")
