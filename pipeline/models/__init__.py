"""Model backends: a leaf layer shared by pipeline stages and training, with their registry.

It imports nothing from the rest of emoforge but the catalog's contract constants. One factory
per task (heavy libraries load inside the factories):

    faces.load_face_backend(name="mediapipe", identity="dlib", threads=1) -> FaceBackend
    faces.load_identity(name="dlib", threads=1) -> IdentityEmbedder
    emotion.load_emotion(backend="fer+facex") -> EmotionModel  (crop_faces frames the input)
    expression.load_expression(backend="blendshapes", ...) -> ExpressionModel
    lip_sync.load_lip_sync(backend="av_corr", max_offset_frames=15, ...) -> LipSyncScorer
    speech.load_encoder(backend="whisper-base", engine="onnxruntime"), speech.load_vad(...),
    speech.encoder_features(encoder, audio, frames) -> float16[frames, D]
    speech.encoder_states(encoder, audio, frames) -> float32[W, 1500, D] (30 s windows), then
    speech.pool_features(states, frames) and speech.load_transcriber().transcribe(states, n);
    speech.load_speech(backend) -> openai-whisper's whole model (reference transcripts)
    thresholds.IDENTITY_DISTANCE: per identity backend
"""

from pipeline.models.registry import (
    MissingWeightsError,
    ModelSpec,
    all_specs,
    cache_root,
    get_spec,
    model_root,
    register,
    resolve,
)

__all__ = [
    "MissingWeightsError",
    "ModelSpec",
    "all_specs",
    "cache_root",
    "get_spec",
    "model_root",
    "register",
    "resolve",
]
