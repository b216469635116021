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
from cl_assets.core.quality import quality_verdict
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
        threshold = settings.retrain_min_feedback
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
        db = store.get()
        verdict = quality_verdict(
            db.deployment_history(),
            lambda adapter_id: ratings_for(db, adapter_id),
            min_ratings=settings.quality_min_ratings,
            drop_margin=settings.quality_drop_margin,
            action=settings.quality_action,
            judged=context.cursor,
        )
        if verdict.action == "skip":
            return SkipReason(verdict.reason)
        assert verdict.drop is not None and verdict.previous is not None
        record_event(settings, db, "quality_drop", adapter=verdict.adapter_id, previous=verdict.previous,
                     drop=round(verdict.drop, 4), action=settings.quality_action)  # fmt: skip
        context.log.warning(verdict.reason)
        if verdict.action == "alert":
            return SensorResult(skip_reason=SkipReason(f"alert: {verdict.reason}"), cursor=str(verdict.deployment_id))
        run_config = {"ops": {"deployed_adapter": {"config": {"actor": "quality_sensor", "reason": verdict.reason}}}}
        return SensorResult(
            run_requests=[
                RunRequest(
                    partition_key=verdict.previous,
                    run_key=f"rollback-{verdict.deployment_id}",
                    run_config=run_config,
                    tags={"cl/trigger": "quality"},
                )
            ],
            cursor=str(verdict.deployment_id),
        )

    return [feedback_sensor, quality_sensor]
