"""Per-track analyzers (audio, lip_sync, expression, emotion) that share one decode of a track's
face-crop clip; pipeline/stages/analyze/stage.py runs them as one actor stage."""
