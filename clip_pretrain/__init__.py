"""clip_pretrain: contrastive image-text pretraining (data, pretrain, eval, launch, common).

The design card keeps those folders at the top of the repository; installed, they are this
package's subpackages (pyproject.toml maps them), so they cannot collide with another project's
`data` or `eval`. In a source checkout, the folders beside this one are found through `__path__`,
so `python -m clip_pretrain.pretrain.train` runs from the repository root without installing.
"""

from pathlib import Path

_CHECKOUT = Path(__file__).resolve().parent.parent
if not (Path(__file__).parent / "pretrain").is_dir() and (_CHECKOUT / "pretrain" / "train.py").is_file():
    __path__.append(str(_CHECKOUT))  # noqa: F821 - a package's __path__ is defined by the import system
