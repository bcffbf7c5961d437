"""LAid workbench: long-window anchoring distillation of vision-language models.

Core package, importing nothing above it: io, config, run layout and method registry
(`laid.io`, `laid.config`, `laid.layout`, `laid.methods`), synthetic Visual Haystacks data
(`laid.data`), model loading, prompting and hooks (`laid.model`), the tiny Qwen2.5-VL model zoo
(`laid.zoo`) and evaluation with its inference-time variants (`laid.eval`). The distillation lives
in `trainers/`, the mechanistic analysis in `laid_analysis/`, and the main job, comparison, figures
and command line in `laid_workflows/` (pyproject.toml [tool.importlinter] keeps the layers).
"""

__version__ = "0.1.0"
