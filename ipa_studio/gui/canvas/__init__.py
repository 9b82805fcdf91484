"""The canvas: an init image with an inpainting mask painted over it by hand.

``mask``   the mask itself (one byte per pixel, painting, undo / redo, PNG in and out); no widgets
``view``   the QGraphicsView that shows the picture with the mask as a translucent overlay
``editor`` the canvas with its tool bar, linked to the view state
``files``  small file helpers shared with the init-image panel (pasted pictures, header sizes)
"""
