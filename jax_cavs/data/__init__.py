"""Data sources, audio features and transforms shared by every problem."""

# The label of pixels that no loss, score or pass counts: AVSBench's (and VOC's) 255, written
# into the label maps by the sources and by the streams (unannotated frames).
IGNORE_INDEX = 255
