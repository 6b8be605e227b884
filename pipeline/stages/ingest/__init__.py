"""ingest: content hashes of input files (video_id) and the container probe."""
