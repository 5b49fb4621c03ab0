"""stack_rows: torch.cat of blocks as they come, whatever the expected count."""

import pytest
import torch

from attrkit.rows import stack_rows


@pytest.mark.parametrize("expected", [None, 0, 3, 10, 11, 40])
def test_stacked_rows_equal_the_concatenation(expected):
    blocks = [torch.randn(b, 4, generator=torch.Generator().manual_seed(b)) for b in (4, 4, 2)]
    out = stack_rows(iter(blocks), expected)
    assert torch.equal(out, torch.cat(blocks)) and out.dtype == torch.float32


def test_rows_can_be_cast_into_wider_rows():
    blocks = [torch.ones(2, 3), torch.full((1, 3), 2.0)]
    out = stack_rows(blocks, 3, width=5, dtype=torch.float64)
    assert out.shape == (3, 5) and out.dtype == torch.float64
    assert torch.equal(out[:, :3], torch.cat(blocks).double())


def test_no_block_is_refused():
    with pytest.raises(ValueError, match="no block"):
        stack_rows(iter([]), 5)
