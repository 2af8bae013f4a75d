"""DIVER: stage-1 inputs, the DM distiller, the guidance maths and the run."""
