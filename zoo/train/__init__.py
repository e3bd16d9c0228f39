"""The one training loop every recipe uses (see docs/training.md).

    from zoo.train import Trainer, TrainConfig, CausalLMTask
    Trainer(model, CausalLMTask(), examples, TrainConfig(steps=100), "runs/x").fit()

Recipes (``zoo finetune RECIPE.yaml key=value ...``) build the model, data and task from a
YAML file and call the same Trainer; see ``zoo.train.recipes``.
"""

from zoo.train.config import Recipe, RecipeError, TrainConfig, load_recipe
from zoo.train.data import CausalLMTask, ClassificationTask, StepSampler, collate
from zoo.train.trainer import Trainer, TrainingDiverged, TrainResult

__all__ = [
    "CausalLMTask",
    "ClassificationTask",
    "Recipe",
    "RecipeError",
    "StepSampler",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "TrainingDiverged",
    "collate",
    "load_recipe",
]
