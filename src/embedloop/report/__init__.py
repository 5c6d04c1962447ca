"""Report: what a run tells MLflow and people: tracking, the run summary, the champion's
history."""
