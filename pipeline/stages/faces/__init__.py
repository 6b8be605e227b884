"""faces: detection, tracking, face-crop clips and the stage that writes tracks and frames."""
