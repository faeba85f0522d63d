"""Each stage is a recipe with only what differs: every stage has one; DPO, ORPO and KTO build on the preference
recipe."""
from __future__ import annotations

from backend.stages import recipe_for
from backend.stages.recipe import PreferenceRecipe, StageRecipe
from backend.vocab import Stage


def test_every_stage_has_a_recipe_and_preference_stages_share_the_preference_one():
    for stage in Stage:
        recipe = recipe_for(stage)
        assert isinstance(recipe, StageRecipe)
        assert isinstance(recipe, PreferenceRecipe) == stage.is_preference
    assert recipe_for("sft") is recipe_for(Stage.SFT)
