"""Forward records: each forward pass returns what it ran, and leaves nothing on the modules."""
import torch
import torch.nn as nn

from plugin.models.backbones import DynamicViT, SparseViTSwin
from plugin.models.utils.records import KeptTiles, RecordingScope, recording

TINY_SWIN = dict(embed_dims=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4), window_size=4, drop_path_rate=0.)
TINY_VIT = dict(embed_dims=48, depth=4, num_heads=2, pruning_locs=(1, 3), keep_ratio=0.5, drop_path_rate=0.)


def module_state(model: nn.Module) -> dict:
    """Every module's own attributes (not its parameters, buffers or children), by identity and value."""
    state = {}
    for name, module in model.named_modules():
        for key, value in vars(module).items():
            if key in ('_parameters', '_buffers', '_modules'):
                continue
            state[f'{name}.{key}'] = (id(value), repr(value) if not isinstance(value, torch.Tensor) else None)
    return state


def kept(record) -> list:
    return [block.kept for stage in record.stages for block in stage.blocks]


def test_forwards_leave_module_attributes_unchanged_and_each_record_describes_its_input():
    models = [SparseViTSwin(**TINY_SWIN, pruning_ratios=[0.5, [0.25, 0.5], 0.5, 0.]),
              SparseViTSwin(**TINY_SWIN, scorer='learned', pruning_ratios=0.5),
              DynamicViT(**TINY_VIT)]
    first, second = torch.randn(2, 3, 64, 96), torch.randn(1, 3, 80, 48)
    for model in models:
        for training in (False, True):
            model.train(training)
            before = module_state(model)
            with torch.set_grad_enabled(training):
                _, record_first = model.forward_with_record(first)
                _, record_second = model.forward_with_record(second)
                _, record_again = model.forward_with_record(first)
            assert module_state(model) == before, type(model).__name__
            assert record_first.input_shape == (64, 96) and record_second.input_shape == (80, 48)
            assert [stage.hw_shape for stage in record_first.stages] != [stage.hw_shape for stage in
                                                                         record_second.stages]
            for stage in record_first.stages:
                for block in stage.blocks:
                    if block.kept is not None:
                        assert block.kept.shape[0] == 2
                    if block.kept_fraction is not None:
                        assert block.kept_fraction.shape == (2, )
            if not training:
                # the same input gives the same record, whatever ran in between
                for a, b in zip(kept(record_first), kept(record_again)):
                    assert (a is None and b is None) or torch.equal(a, b)
            else:
                assert record_first.keep_ratio_terms()[0] or isinstance(model, SparseViTSwin) \
                    and model.stages[0].window_scorer is None


def test_recording_scopes_collect_the_passes_inside_them_and_nest():
    model = SparseViTSwin(**TINY_SWIN, pruning_ratios=0.5).eval()
    image = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        model(image)  # no open scope: nothing is kept anywhere
        with recording() as outer:
            model(image)
            with recording() as inner:
                _, record = model.forward_with_record(image)
            model(image)
        model(image)
    assert len(outer) == 3 and len(inner) == 1 and inner[0] is record and outer[1] is record
    # a scope closed out of order leaves the others open
    first, second = RecordingScope(), RecordingScope()
    first.close()
    with torch.no_grad():
        model(image)
    assert first.records == [] and len(second.close()) == 1


def test_kept_tiles_are_the_first_pruned_regular_block_windows_as_pixel_masks():
    model = SparseViTSwin(**TINY_SWIN, pruning_ratios=[[0.25, 0.5], 0., [0.5, 0.75], 0.]).eval()
    with torch.no_grad():
        _, record = model.forward_with_record(torch.randn(2, 3, 75, 110))
    tiles = record.kept_tiles((0, 1, 2, 3))
    assert tiles[1] is None and tiles[3] is None
    stage = record.stages[0]  # 19x28 tokens, 5x7 windows of 4
    assert tiles[0].feature_shape == (19, 28) and tiles[0].grid_shape == (5, 7) and tiles[0].tile_size == 4
    assert torch.equal(tiles[0].index, stage.blocks[0].kept) and tiles[0].index.shape == (2, 26)
    mask = tiles[0].mask()
    assert mask.shape == (2, 19, 28)
    for image in range(2):
        expected = torch.zeros(20, 28, dtype=torch.bool)
        for tile in stage.blocks[0].kept[image].tolist():
            row, col = divmod(tile, 7)
            expected[row * 4:row * 4 + 4, col * 4:col * 4 + 4] = True
        assert torch.equal(mask[image], expected[:19])
    # stage 3: the tiles are its first (regular-grid) block's windows, not the sparser set of the block after it
    first, second = record.stages[2].blocks
    assert tiles[2].index.shape[1] == first.kept.shape[1] > second.kept.shape[1]
    assert KeptTiles(torch.tensor([[0, 3]]), 2, (3, 3)).kept_fraction == 0.5
