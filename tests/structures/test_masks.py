"""Mask structures: largest-component boxes (``objguided_d2.structures.masks``)."""
import torch

from objguided_d2.structures import largest_component_boxes


def test_largest_component_boxes():
    m = torch.zeros(4, 20, 30, dtype=torch.bool)
    m[0, 2:5, 3:6] = True  # 9 px
    m[0, 10:18, 12:25] = True  # the larger one
    m[1, 5, 5] = True  # diagonal neighbours are separate under 4-connectivity
    m[1, 6, 6] = True
    m[1, 7, 6] = True
    m[2, 0:20, 29] = True
    boxes = largest_component_boxes(m)
    assert boxes.dtype == torch.float32 and boxes.shape == (4, 4)
    assert boxes[0].tolist() == [12, 10, 25, 18]
    assert boxes[1].tolist() == [6, 6, 7, 8]
    assert boxes[2].tolist() == [29, 0, 30, 20]
    assert boxes[3].tolist() == [0, 0, 0, 0]  # empty mask
    assert largest_component_boxes(torch.zeros(0, 5, 5, dtype=torch.bool)).shape == (0, 4)
