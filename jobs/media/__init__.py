"""Generated and real media for tests, benchmarks and the demo (one place for every generator).

- sources: real media from registry packages (`media_file`) and espeak-ng speech (`speak`)
- synthetic: textured shots with cuts, fades, slow motion, tones; `generated_video` (cached)
- talking_face: a real face photo made to talk (known audio offset), mouth measured with dlib
- demo_corpus: the demo's inputs and `mux_speech`
- ingest_cases: odd-but-valid and broken inputs for ingest, with their expected metadata
- synthetic_catalog: a synthetic catalog with known ground truth (report tests and bench)
"""
