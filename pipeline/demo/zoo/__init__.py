"""The demo zoo's own code: the digit models' recipes, caption attributes, checks and their one training loop.

It sits under ``pipeline.demo`` because only the demo's commands (``semdistill zoo train-demo``) use it and
it uses the layers below: the actors (captioner, CLIP, SD, DiT recovery), ``tuning``'s losses and EDITS's and
DIVER's pure steps (``pipeline.edits.gsq``/``lsa``/``prompts``, ``pipeline.diver.guidance``). The zoo loads
the shipped checkpoints (``actors/demo_weights``) without it.
"""
