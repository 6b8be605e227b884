"""Identity backends: face embeddings (dlib ResNet 128-d, ArcFace 512-d)."""
