"""scenes: shot boundaries (fast cuts, fades, black runs) and the stage that writes clips."""
