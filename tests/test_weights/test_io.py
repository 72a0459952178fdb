"""Reading every format: bad or hostile files get a CheckpointError that
names the file and the problem."""
import pickle

import pytest
import torch
from safetensors.torch import save_file

from xcit_mm.weights import CheckpointError, read_checkpoint


def _zip_checkpoint(path):
    torch.save({'state_dict': {'w': torch.arange(1000.)}}, path)
    return path


@pytest.mark.parametrize('name, content, message', [
    ('text.pth', b'hello, I am not a checkpoint\n', 'not a PyTorch checkpoint'),
    ('empty.pth', b'', 'empty'),
    ('bad.safetensors', b'\xff' * 64, 'safetensors'),
    ('text.pdparams', b'not a pickle at all', 'PaddlePaddle'),
    ('noise.ckpt', bytes(range(256)) * 4, 'MindSpore'),
])
def test_bad_files_name_file_and_problem(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(CheckpointError) as err:
        read_checkpoint(str(path))
    assert name in str(err.value) and message in str(err.value)


def test_truncated_torch_checkpoint(tmp_path):
    path = _zip_checkpoint(tmp_path / 'full.pth')
    cut = tmp_path / 'cut.pth'
    cut.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 2])
    with pytest.raises(CheckpointError, match='cut.pth.*truncated'):
        read_checkpoint(str(cut))


def test_truncated_safetensors(tmp_path):
    path = tmp_path / 'w.safetensors'
    save_file({'w': torch.arange(1000.)}, str(path))
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match='w.safetensors'):
        read_checkpoint(str(path))


def test_truncated_mindspore_checkpoint(tmp_path, foreign_dir):
    data = (foreign_dir / 'mindcv_p16.ckpt').read_bytes()
    path = tmp_path / 'cut.ckpt'
    path.write_bytes(data[:len(data) // 2 + 3])
    with pytest.raises(CheckpointError, match='cut.ckpt'):
        read_checkpoint(str(path))


class _RunsCode:
    """Unpickling this would call ``marker.write_text``."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import pathlib
        return (pathlib.Path.write_text, (self.marker, 'pwned'))


def test_hostile_pdparams_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / 'ran'
    path = tmp_path / 'xcit.pdparams'
    with open(path, 'wb') as f:
        pickle.dump({'backbone.x': _RunsCode(marker)}, f, protocol=4)
    with pytest.raises(CheckpointError, match='Refusing to load.*pathlib'):
        read_checkpoint(str(path))
    assert not marker.exists()


def test_hostile_pth_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / 'ran'
    path = tmp_path / 'xcit.pth'
    torch.save({'x': _RunsCode(marker)}, path)
    with pytest.raises(CheckpointError, match='Refusing to load'):
        read_checkpoint(str(path))
    assert not marker.exists()


def test_missing_file_and_unknown_scheme(tmp_path):
    with pytest.raises(CheckpointError, match='not found'):
        read_checkpoint(str(tmp_path / 'nope.pth'))
    with pytest.raises(CheckpointError, match='nope://bucket/x.pth'):
        read_checkpoint('nope://bucket/x.pth')


def test_reading_keeps_the_process_allow_list(tmp_path):
    """read_checkpoint leaves the globals that `import xcit_mm` allowed in
    place, so a runner can still resume from its own checkpoints."""
    import torch
    from mmengine.logging import HistoryBuffer
    torch.save({'w': torch.ones(1)}, tmp_path / 'a.pth')
    read_checkpoint(str(tmp_path / 'a.pth'))
    torch.save({'hub': HistoryBuffer([1.0], [1])}, tmp_path / 'b.pth')
    hub = torch.load(tmp_path / 'b.pth', weights_only=True)['hub']
    assert isinstance(hub, HistoryBuffer)
