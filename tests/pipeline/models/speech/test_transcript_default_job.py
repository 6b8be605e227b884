"""Transcripts are on in the default job: an espeak-ng sentence curated through jobs/default.toml
on Ray comes back as its words (bundled Whisper base, decoded on CTranslate2 from the features'
encoder pass), and the CTranslate2 decoder reads the same words as the openai-whisper reference
from the same audio."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import catalog
from jobs.media.talking_face import astronaut_face, make_clip, speech
from jobs.spec import load
from pipeline.run import runner
from pipeline.stages.analyze.audio import speech_windows
from pipeline.models.speech import encoder_states, load_transcriber
from test_audio_whisper import word_errors, words

SENTENCE = "Open the window, it is getting very warm in this little room today."
DEFAULT_JOB = Path(__file__).resolve().parents[4] / "jobs" / "default.toml"



def test_speech_windows_cover_every_segment():
    assert speech_windows([]) == set()
    assert speech_windows([(0.2, 4.0)]) == {0}
    assert speech_windows([(29.0, 31.0), (75.0, 90.0)]) == {0, 1, 2}
    assert speech_windows([(10.0, 30.0)]) == {0}  # ends exactly at the window edge


@pytest.mark.ray
@pytest.mark.slow  # the whole default job on Ray: 1.5-3 minutes on 2 cores
def test_default_job_transcribes_an_espeak_sentence(tmp_path, ray_local):
    clip = tmp_path / "in" / "talking.mp4"
    clip.parent.mkdir()
    make_clip(clip, astronaut_face(224), SENTENCE, seed=1)
    out = tmp_path / "cat"
    spec = load(DEFAULT_JOB, [f"job.inputs={json.dumps([str(clip)])}",
                              f"job.out={json.dumps(str(out))}"])
    assert spec.configs["analyze"].audio.transcribe  # on by default, not by this test
    runner.run_stages([str(clip)], str(out), list(spec.stages), spec.configs, spec.runner,
               job_spec=spec.resolved())
    tracks = catalog.read_table(out, "tracks").to_pylist()
    assert len(tracks) == 1 and tracks[0]["audio_status"] == "ok", tracks
    track = tracks[0]
    assert track["language"] == "en"
    errors = word_errors(words(SENTENCE), words(track["transcript"]))
    assert errors <= 1, f"{errors} word errors: {track['transcript']!r}"
    segments = track["transcript_segments"]  # in the catalog, inside the track's speech
    speech_span = (track["speech_segments"][0]["start_s"], track["speech_segments"][-1]["end_s"])
    assert segments and segments[0]["start_s"] <= speech_span[0] + 0.6
    assert segments[-1]["end_s"] >= speech_span[1] - 0.6
    assert (out / track["audio_features_path"]).is_file()


def test_ct2_decoder_reads_the_reference_words_from_the_shared_encoder_pass():
    """The same states give the features and the CTranslate2 transcript; openai-whisper's own
    transcribe of the audio is the reference (at most one word apart, both near the sentence)."""
    from pipeline.models.speech import load_encoder, load_speech

    audio = speech(SENTENCE)
    frames = len(audio) // 640
    states = encoder_states(load_encoder("whisper-base"), audio, frames)
    model = load_speech("whisper-base")
    assert states.shape == (1, 1500, 512)
    ours = load_transcriber().transcribe(states, len(audio))
    reference = model.transcribe(audio, fp16=False, condition_on_previous_text=False)
    assert ours.language == reference["language"] == "en"
    assert word_errors(words(reference["text"]), words(ours.text)) <= 1, (ours.text, reference)
    assert word_errors(words(SENTENCE), words(ours.text)) <= 1, ours.text
    assert ours.segments and 0.0 <= ours.segments[0][0] < ours.segments[-1][1] <= len(audio) / 16000
