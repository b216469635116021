"""Sensors: retrain when enough feedback has built up; react when quality drops after a deploy."""


from dagster import (
    DefaultSensorStatus,
    RunRequest,
    SensorDefinition,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)

from cl_assets.core.events import record_event
from cl_assets.core.monitoring import ratings_for
from cl_assets.core.snapshot import new_snapshot_id
from cl_assets.defs.jobs import cycle_job, rollback_job
from cl_assets.defs.partitions import snapshot_partitions
from cl_assets.defs.resources import StoreResource
from cl_assets.settings import Settings


def build_sensors(settings: Settings) -> list[SensorDefinition]:
    """Sensors with intervals and thresholds taken from the settings."""

    @sensor(
        job=cycle_job,
        minimum_interval_seconds=settings.sensor_interval_s,
        default_status=DefaultSensorStatus.RUNNING,
        description=f"Starts a learning cycle once CL_RETRAIN_MIN_FEEDBACK ({settings.retrain_min_feedback}) "
        "new feedback events have arrived since the last snapshot.",
    )
    def feedback_sensor(context: SensorEvaluationContext, store: StoreResource) -> SensorResult | SkipReason:
        db = store.get()
        if context.cursor:
            watermark = int(context.cursor)
        else:
            latest = db.latest_snapshot()
            watermark = latest.feedback_watermark if latest else 0
        count, newest = db.feedback_since(watermark)  # indexed range on new events only
        threshold = store.settings.get().retrain_min_feedback
        if count < threshold:
            return SkipReason(f"{count} new feedback event(s) since the last snapshot; a cycle needs {threshold}")
        snapshot_id = new_snapshot_id()
        return SensorResult(
            run_requests=[RunRequest(partition_key=snapshot_id, run_key=f"cycle-{snapshot_id}", tags={"cl/trigger": "feedback"})],
            dynamic_partitions_requests=[snapshot_partitions.build_add_request([snapshot_id])],
            cursor=str(newest),
        )

    @sensor(
        job=rollback_job,
        minimum_interval_seconds=settings.sensor_interval_s,
        default_status=DefaultSensorStatus.RUNNING,
        description="Compares the deployed adapter's helpful rate with the previous adapter's; on a drop "
        "beyond CL_QUALITY_DROP_MARGIN it alerts or (CL_QUALITY_ACTION=rollback) rolls back.",
    )
    def quality_sensor(context: SensorEvaluationContext, store: StoreResource) -> SensorResult | SkipReason:
        cfg = store.settings.get()
        db = store.get()
        history = db.deployment_history()
        if not history or history[-1].adapter_id is None:
            return SkipReason("no adapter is deployed")
        current = history[-1]
        if context.cursor == str(current.id):
            return SkipReason(f"deployment {current.id} was already judged")
        previous = next((d.adapter_id for d in reversed(history) if d.adapter_id != current.adapter_id), None)
        if previous is None:
            return SkipReason("no earlier adapter to compare with")
        now, before = ratings_for(db, current.adapter_id), ratings_for(db, previous)
        if now.rated < cfg.quality_min_ratings or before.rated < cfg.quality_min_ratings:
            return SkipReason(
                f"not enough ratings yet ({now.rated} for {current.adapter_id}, {before.rated} for {previous}; "
                f"need {cfg.quality_min_ratings} each)"
            )
        assert now.rate is not None and before.rate is not None
        drop = before.rate - now.rate
        if drop < cfg.quality_drop_margin:
            return SkipReason(f"helpful rate {now.rate:.0%} vs {before.rate:.0%}: within the margin")
        why = (
            f"helpful rate of {current.adapter_id} fell to {now.rate:.0%} ({now.rated} ratings) from "
            f"{before.rate:.0%} for {previous} ({before.rated} ratings)"
        )
        record_event(cfg, db, "quality_drop", adapter=current.adapter_id, previous=previous, drop=round(drop, 4), action=cfg.quality_action)
        context.log.warning(why)
        if cfg.quality_action != "rollback":
            return SensorResult(skip_reason=SkipReason(f"alert: {why}"), cursor=str(current.id))
        run_config = {"ops": {"deployed_adapter": {"config": {"actor": "quality_sensor", "reason": why}}}}
        return SensorResult(
            run_requests=[
                RunRequest(
                    partition_key=previous,
                    run_key=f"rollback-{current.id}",
                    run_config=run_config,
                    tags={"cl/trigger": "quality"},
                )
            ],
            cursor=str(current.id),
        )

    return [feedback_sensor, quality_sensor]
