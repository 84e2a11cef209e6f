"""The face pass: find faces, align each to a restorer's canonical crop, restore it, paste it back.

detect (MTCNN: boxes and five landmarks) → similarity transform to the FFHQ five-point template →
face restorer (GFPGAN, RestoreFormer, or any scale-1 network spandrel loads) → the change it made,
warped back and blended through a feathered face-shaped mask. Only the colour of faces changes.
"""
