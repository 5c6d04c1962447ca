"""MLflow writes as tasks: a tracking server is a network service, so each write retries
(twice, after 2 s and 10 s) before it fails the run. What is written: embedloop.report.tracking."""

from __future__ import annotations

from embedloop.report import tracking
from embedloop.tasks._stage import io_stage

start_tracking_stage = io_stage(name="start tracking")(tracking.start_tracking)
log_validation_stage = io_stage(name="log validation")(tracking.log_validation)
log_evaluation_stage = io_stage(name="log evaluation")(tracking.log_evaluation)
finish_tracking_stage = io_stage(name="finish tracking")(tracking.finish_tracking)
log_users_stage = io_stage(name="log users")(tracking.log_users_evidence)
log_training_stage = io_stage(name="log training")(tracking.log_training)
