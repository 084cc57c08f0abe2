"""experiments/eval.ipynb: an unknown papermill parameter fails loudly (before any work is done)."""
from pathlib import Path
import pytest

REPO = Path(__file__).resolve().parents[1]

def test_unknown_parameter_fails(tmp_path):
    papermill = pytest.importorskip('papermill')
    with pytest.raises(papermill.PapermillExecutionError, match='unknown parameter'):
        papermill.execute_notebook(str(REPO / 'experiments' / 'eval.ipynb'), str(tmp_path / 'out.ipynb'), kernel_name='python3',
                                   parameters=dict(limt=5, out_dir=str(tmp_path)), cwd=str(REPO), progress_bar=False)
    assert not (tmp_path / 'results.json').exists()
