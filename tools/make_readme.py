"""Render nbs/index.ipynb to README.md (markdown cells as they are, code cells as python blocks).

nbdev_readme needs Quarto, which can't be installed from a package registry; this keeps README.md generated from
the index notebook without it. Run via `make readme`.
"""
import json, sys
from pathlib import Path

root = Path(__file__).resolve().parents[1]
nb = json.loads((root / 'nbs' / 'index.ipynb').read_text())
parts = []
for cell in nb['cells']:
    src = ''.join(cell['source']).strip()
    if not src: continue
    if cell['cell_type'] == 'markdown': parts.append(src)
    elif cell['cell_type'] == 'code' and not src.startswith('#| hide'):
        parts.append('```python\n' + '\n'.join(l for l in src.splitlines() if not l.startswith('#|')) + '\n```')
out = '<!-- generated from nbs/index.ipynb by tools/make_readme.py: edit the notebook, then `make readme` -->\n\n'
(root / 'README.md').write_text(out + '\n\n'.join(parts) + '\n')
print('wrote README.md', file=sys.stderr)
